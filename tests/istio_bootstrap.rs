//! Istio's rendered bootstraps (`envoy-rev.json`, the golden files of istio/istio in
//! `../shared/istio/bootstrap/`) under pilot-agent's command line, pilotfish and Envoy
//! 1.40 side by side: what loads, what the admin API pilot-agent and istioctl read
//! answers, how the Prometheus and health listeners behave, how stats are named under
//! Istio's `stats_config`.
mod common;

use std::{
    io::Read,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::{istio::*, xds::*, *};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

fn validate(bin: &str, file: &Path, extra: &[&str]) -> (bool, String) {
    let out = Command::new(bin)
        .args(["--mode", "validate", "-c"])
        .arg(file)
        .args(AGENT_FLAGS)
        .args(extra)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Every golden under pilot-agent's flags: those pilotfish runs validate as in Envoy;
/// the rest fail on exactly the elements still missing (listed here so that landing one
/// makes this test say so).
#[test]
fn every_golden_validates_or_names_what_is_missing() {
    if !goldens_present() {
        return;
    }
    let envoy = reference_envoy();
    for (file, missing) in [
        ("bootstrap-default-golden-1.30.3.json", None::<&str>),
        ("bootstrap-default-golden-1.22.0.json", None),
        ("bootstrap-stats-inclusion-golden-1.30.3.json", None),
        ("bootstrap-tracing-zipkin-golden-1.30.3.json", None),
        ("bootstrap-all-golden-1.30.3.json", None),
    ] {
        let path = Path::new(GOLDENS).join(file);
        let (ok, out) = validate(BIN, &path, &[]);
        match missing {
            None => assert!(ok, "{file}: {out}"),
            Some(m) => assert!(!ok && out.contains(m), "{file}: {out}"),
        }
        if let Some(envoy) = &envoy {
            let (ok, out) = validate(envoy, &path, &[]);
            assert!(ok, "Envoy refused {file}: {out}");
        }
    }
}

/// Both refuse a `--log-format` next to the bootstrap's `application_log_config`, an
/// unknown flag, an unknown logger; both take an unknown bootstrap field only with
/// `--allow-unknown-static-fields`.
#[test]
fn the_command_line_as_envoy_checks_it() {
    if !goldens_present() {
        return;
    }
    let Some(envoy) = reference_envoy() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let default = dir.path().join("envoy-rev.json");
    std::fs::write(&default, golden("bootstrap-default-golden-1.30.3.json")).unwrap();
    let mut unknown: serde_json::Value =
        serde_json::from_str(&golden("bootstrap-default-golden-1.30.3.json")).unwrap();
    unknown["admin"]["no_such_field"] = serde_json::json!(1);
    let unknown_path = dir.path().join("unknown.json");
    std::fs::write(&unknown_path, unknown.to_string()).unwrap();
    let strict = |bin: &str| {
        Command::new(bin)
            .args(["--mode", "validate", "-c"])
            .arg(&unknown_path)
            .output()
            .unwrap()
    };
    for bin in [BIN, envoy.as_str()] {
        let (ok, out) = validate(bin, &default, &["--log-format", "%v"]);
        assert!(
            !ok && out.contains(
                "Only one of ApplicationLogConfig.log_format or CLI option --log-format can be specified."
            ),
            "{bin}: {out}"
        );
        let (ok, out) = validate(bin, &default, &["--max-obj-name-len", "189"]);
        assert!(!ok, "{bin} took --max-obj-name-len: {out}");
        let out = Command::new(bin)
            .args(["--mode", "validate", "-c"])
            .arg(&default)
            .args(["--component-log-level", "nosuch:info"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stderr).into_owned()
            + &String::from_utf8_lossy(&out.stdout);
        assert!(
            !out.status.success() && text.contains("invalid component specified 'nosuch'"),
            "{bin}: {text}"
        );
        let (ok, out) = validate(bin, &unknown_path, &[]);
        assert!(ok, "{bin} with --allow-unknown-static-fields: {out}");
        let out = strict(bin);
        let text = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && text.contains("no_such_field"),
            "{bin} without --allow-unknown-static-fields: {text}"
        );
    }
    // `--version` in Envoy's format: a blank line, argv[0], two spaces, the version.
    let out = Command::new(BIN).arg("--version").output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let re = regex::Regex::new(&format!(
        r"^\n{}  version: [0-9a-f]{{40}}/{}/Clean/RELEASE/rustls\n\n$",
        regex::escape(BIN),
        env!("CARGO_PKG_VERSION")
    ))
    .unwrap();
    assert!(re.is_match(&text), "{text:?}");
    let out = Command::new(&envoy).arg("--version").output().unwrap();
    let envoy_text = String::from_utf8(out.stdout).unwrap();
    assert!(
        regex::Regex::new(r"^\n\S+  version: [0-9a-f]{40}/1\.40\.\d+/Clean/RELEASE/BoringSSL\n\n$")
            .unwrap()
            .is_match(&envoy_text),
        "{envoy_text:?}"
    );
}

/// A port free right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One proxy on an Istio golden, with its ports moved so that two run side by side and
/// its xDS socket served by an in-test control plane (empty CDS and LDS, as an istiod
/// with nothing for the pod would send).
struct Sidecar {
    child: Child,
    admin: SocketAddr,
    stats: SocketAddr,
    health: SocketAddr,
    _xds: XdsServer,
    _agent: Upstream,
    _dir: tempfile::TempDir,
    log: PathBuf,
}

impl Sidecar {
    async fn start(bin: &str, file: &str) -> Sidecar {
        Sidecar::launch(bin, file, true).await
    }

    /// `configured`: the control plane answers CDS and LDS; without, the proxy waits in
    /// PRE_INITIALIZING (the goldens' `initial_fetch_timeout` is 0: wait for ever).
    async fn launch(bin: &str, file: &str, configured: bool) -> Sidecar {
        Sidecar::launch_with(bin, file, configured, &[]).await
    }

    /// [`Sidecar::launch`], with `replace` applied to the golden's text first.
    async fn launch_with(
        bin: &str,
        file: &str,
        configured: bool,
        replace: &[(&str, String)],
    ) -> Sidecar {
        let dir = tempfile::tempdir().unwrap();
        let xds_path = dir.path().join("XDS");
        let xds = XdsServer::start_unix(&xds_path).await;
        if configured {
            xds.set(CDS, vec![]);
            xds.set(LDS, vec![]);
        }
        let agent = Upstream::start("agent").await;
        let (admin, stats, health) = (free_port(), free_port(), free_port());
        let mut text = golden(file);
        for (from, to) in replace {
            text = text.replace(from, to);
        }
        let text = text
            .replace("\"port_value\": 15000", &format!("\"port_value\": {admin}"))
            // The "all" golden's admin port (its proxyAdminPort).
            .replace("\"port_value\": 15005", &format!("\"port_value\": {admin}"))
            .replace("\"port_value\": 15090", &format!("\"port_value\": {stats}"))
            .replace(
                "\"port_value\": 15021",
                &format!("\"port_value\": {health}"),
            )
            .replace(
                "\"port_value\": 15020",
                &format!("\"port_value\": {}", agent.addr.port()),
            )
            .replace("/tmp/XDS", xds_path.to_str().unwrap());
        let cfg = dir.path().join("envoy-rev.json");
        std::fs::write(&cfg, text).unwrap();
        let log = dir.path().join("log");
        let child = Command::new(bin)
            .arg("-c")
            .arg(&cfg)
            .args(AGENT_FLAGS)
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
            .spawn()
            .unwrap();
        let loopback = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
        let s = Sidecar {
            child,
            admin: loopback(admin),
            stats: loopback(stats),
            health: loopback(health),
            _xds: xds,
            _agent: agent,
            _dir: dir,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match http_get(s.admin, "/ready").await {
                Ok((200, _)) => break,
                Ok(_) if !configured => break,
                _ => {}
            }
            assert!(
                Instant::now() < deadline,
                "{bin} did not become ready:\n{}",
                s.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        s
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A request sent byte for byte (pilot-agent does not percent-encode its regexes).
    async fn raw(
        &self,
        to: SocketAddr,
        method: &str,
        target: &str,
        headers: &str,
    ) -> (u16, String, Vec<u8>) {
        let mut s = TcpStream::connect(to).await.unwrap();
        s.write_all(
            format!("{method} {target} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n{headers}\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.unwrap();
        let split = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        let head = String::from_utf8_lossy(&buf[..split]).into_owned();
        let code = head[9..12].parse().unwrap();
        let mut body = buf[split + 4..].to_vec();
        if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            body = dechunk(&body);
        }
        (code, head, body)
    }

    async fn admin(&self, method: &str, target: &str) -> (u16, String) {
        let (code, _, body) = self.raw(self.admin, method, target, "").await;
        (code, String::from_utf8_lossy(&body).into_owned())
    }

    /// `/stats?usedonly&filter=…` until `want` says yes (Envoy's `server.state` is
    /// refreshed at its stats flush, every 5 s).
    async fn wait_stats(&self, filter: &str, want: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let (_, body) = self
                .admin("GET", &format!("/stats?usedonly&filter={filter}"))
                .await;
            if want(&body) {
                return body;
            }
            assert!(Instant::now() < deadline, "{filter}: {body}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(nl) = b.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size =
            usize::from_str_radix(std::str::from_utf8(&b[..nl]).unwrap().trim(), 16).unwrap_or(0);
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&b[nl + 2..nl + 2 + size]);
        b = &b[nl + 2 + size + 2..];
    }
}

/// pilot-agent's verdict on its readiness probe's answer (`status/ready/probe.go`): both
/// names present, `server.state` 0 and `workers_started` 1.
fn agent_says_ready(body: &str) -> bool {
    body.contains("server.state")
        && body.contains("listener_manager.workers_started")
        && stat(body, "server.state") == Some(0)
        && stat(body, "listener_manager.workers_started") == Some(1)
}

/// Before its first config, neither proxy looks ready to pilot-agent.
#[tokio::test]
async fn before_its_config_no_sidecar_looks_ready_to_the_agent() {
    if !goldens_present() {
        return;
    }
    let Some(envoy) = reference_envoy() else {
        return;
    };
    let file = "bootstrap-default-golden-1.30.3.json";
    for bin in [BIN, envoy.as_str()] {
        let s = Sidecar::launch(bin, file, false).await;
        // Envoy refreshes server.state at its first stats flush, 5 s in: ask after it.
        tokio::time::sleep(Duration::from_millis(5500)).await;
        let (code, ready) = s.admin("GET", "/ready").await;
        assert_eq!((code, ready.as_str()), (503, "PRE_INITIALIZING\n"), "{bin}");
        let (_, body) = s
            .admin(
                "GET",
                r"/stats?usedonly&filter=^(server\.state|listener_manager\.workers_started)",
            )
            .await;
        assert!(!agent_says_ready(&body), "{bin}: {body}");
        let (_, body) = s
            .admin(
                "GET",
                r"/stats?usedonly&filter=^(cluster_manager\.cds|listener_manager\.lds)\.(update_success|update_rejected)$",
            )
            .await;
        assert_eq!(
            stat(&body, "cluster_manager.cds.update_success").unwrap_or(0),
            0,
            "{bin}: {body}"
        );
    }
}

/// The value of one line `name: value` of a `/stats` text.
fn stat(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        l.strip_prefix(name)?
            .strip_prefix(": ")?
            .trim()
            .parse()
            .ok()
    })
}

/// The default golden of Istio 1.30 in pilotfish and Envoy: what pilot-agent, istioctl
/// and Prometheus read answers the same.
#[tokio::test]
async fn the_default_golden_serves_like_envoy() {
    if !goldens_present() {
        return;
    }
    let Some(envoy) = reference_envoy() else {
        return;
    };
    let file = "bootstrap-default-golden-1.30.3.json";
    let ours = Sidecar::start(BIN, file).await;
    let theirs = Sidecar::start(&envoy, file).await;
    let mut diff = Differences::default();
    for (who, s) in [("pilotfish", &ours), ("envoy", &theirs)] {
        // pilot-agent's readiness: config received, then server live and workers up.
        let config = s
            .wait_stats(
                r"^(cluster_manager\.cds|listener_manager\.lds)\.(update_success|update_rejected)$",
                |b| {
                    stat(b, "cluster_manager.cds.update_success").unwrap_or(0) > 0
                        && stat(b, "listener_manager.lds.update_success").unwrap_or(0) > 0
                },
            )
            .await;
        assert!(!config.contains("update_rejected: 1"), "{who}: {config}");
        let ready = s
            .wait_stats(
                r"^(server\.state|listener_manager\.workers_started)",
                agent_says_ready,
            )
            .await;
        assert_eq!(ready.lines().count(), 2, "{who}: {ready}");
    }

    // The Prometheus listener routes to the admin, compressed as the client asks.
    for (accept, encoding) in [("gzip", Some("gzip")), ("br", Some("br")), ("", None)] {
        let hdr = if accept.is_empty() {
            String::new()
        } else {
            format!("accept-encoding: {accept}\r\n")
        };
        let mut answers = Vec::new();
        for s in [&theirs, &ours] {
            let (code, head, body) = s.raw(s.stats, "GET", "/stats/prometheus", &hdr).await;
            let head = head.to_ascii_lowercase();
            let got = head
                .lines()
                .find_map(|l| l.strip_prefix("content-encoding: "))
                .map(str::to_owned);
            let vary = head.contains("vary: accept-encoding");
            let text = match got.as_deref() {
                Some("gzip") => {
                    let mut t = String::new();
                    flate2::read::GzDecoder::new(&body[..])
                        .read_to_string(&mut t)
                        .unwrap();
                    t
                }
                Some("br") => {
                    let mut t = String::new();
                    brotli::Decompressor::new(&body[..], 4096)
                        .read_to_string(&mut t)
                        .unwrap();
                    t
                }
                _ => String::from_utf8_lossy(&body).into_owned(),
            };
            answers.push((code, got, vary, text));
        }
        let (e, o) = (&answers[0], &answers[1]);
        diff.check(format!("15090 status, accept {accept:?}"), e.0, o.0);
        diff.check(
            format!("15090 content-encoding, accept {accept:?}"),
            e.1.as_deref(),
            o.1.as_deref(),
        );
        assert_eq!(o.1.as_deref(), encoding);
        diff.check(format!("15090 vary, accept {accept:?}"), e.2, o.2);
        // Istio's tags and inclusion list: xds-grpc's stats named by `cluster_name`,
        // no other cluster's, server and manager stats with `{}`.
        for sample in [
            "envoy_cluster_upstream_cx_total{cluster_name=\"xds-grpc\"} ",
            "envoy_cluster_manager_cds_update_success{} ",
            "envoy_listener_manager_lds_update_success{} ",
            "envoy_server_live{} 1",
            "envoy_server_state{} 0",
        ] {
            diff.check(
                format!("15090 has {sample}"),
                e.3.contains(sample),
                o.3.contains(sample),
            );
        }
        for absent in [
            "cluster_name=\"agent\"",
            "cluster_name=\"prometheus_stats\"",
            "envoy_cluster_name",
            "envoy_http_",
            "envoy_listener_",
        ] {
            diff.check(
                format!("15090 lacks {absent}"),
                !e.3.contains(absent),
                !o.3.contains(absent),
            );
        }
    }

    // The health listener hands /healthz/ready to the agent.
    for (who, s) in [("envoy", &theirs), ("pilotfish", &ours)] {
        let (code, _, _) = s.raw(s.health, "GET", "/healthz/ready", "").await;
        assert_eq!(code, 200, "{who} 15021");
    }

    // Admin as istioctl and pilot-agent use it.
    for target in [
        "/server_info",
        "/config_dump?mask=bootstrap",
        "/config_dump?include_eds",
        "/clusters?format=json",
        "/listeners?format=json",
        "/certs",
        "/runtime",
        "/memory",
    ] {
        let (e, _) = theirs.admin("GET", target).await;
        let (o, body) = ours.admin("GET", target).await;
        diff.check(format!("GET {target}"), e, o);
        if target != "/memory" {
            assert!(
                serde_json::from_str::<serde_json::Value>(&body).is_ok(),
                "{target} is not JSON: {body}"
            );
        }
    }
    for (method, target) in [
        ("GET", "/logging"),
        ("GET", "/quitquitquit"),
        ("GET", "/drain_listeners"),
        ("GET", "/healthcheck/fail"),
    ] {
        let e = theirs.admin(method, target).await;
        let o = ours.admin(method, target).await;
        diff.check(format!("{method} {target}"), e, o);
    }
    let info: serde_json::Value =
        serde_json::from_str(&ours.admin("GET", "/server_info").await.1).unwrap();
    assert_eq!(info["state"], "LIVE");
    assert_eq!(info["node"]["id"], "sidecar~1.2.3.4~foo~bar");
    assert_eq!(info["command_line_options"]["drain_time"], "45s");
    assert_eq!(info["command_line_options"]["drain_strategy"], "Immediate");
    let clusters: serde_json::Value =
        serde_json::from_str(&ours.admin("GET", "/clusters?format=json").await.1).unwrap();
    let xds = clusters["cluster_statuses"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "xds-grpc")
        .unwrap();
    assert_eq!(xds["observability_name"], "xds-grpc;");
    assert!(
        xds["host_statuses"][0]["address"]["pipe"]["path"]
            .as_str()
            .unwrap_or_default()
            .ends_with("/XDS"),
        "{xds}"
    );
    let (code, listing) = ours.admin("POST", "/logging?level=debug").await;
    assert_eq!(code, 200);
    assert!(listing.contains("  upstream: debug\n"), "{listing}");

    // pilot-agent on SIGTERM: inbound listeners drain, the server stays live.
    for s in [&theirs, &ours] {
        let (code, body) = s
            .admin("POST", "/drain_listeners?inboundonly&graceful")
            .await;
        assert_eq!((code, body.as_str()), (200, "OK\n"));
        assert_eq!(s.admin("GET", "/ready").await, (200, "LIVE\n".into()));
        let (code, _, _) = s.raw(s.stats, "GET", "/stats/prometheus", "").await;
        assert_eq!(
            code, 200,
            "the outbound-less Prometheus listener still serves"
        );
    }

    // The application log in Istio's format (`application_log_config`).
    let line = regex::Regex::new(
        r"(?m)^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z\t(trace|debug|info|warning|error|critical)\tenvoy [a-z_0-9]+ \S+:\d+\t.*\tthread=\d+$",
    )
    .unwrap();
    let logs = ours.logs();
    assert!(line.is_match(&logs), "no line in Istio's format:\n{logs}");
    diff.assert_none();
}

/// The "all" golden (every option pilot-agent renders) starts in both, serves 15090 and
/// 15021, and its statsd sink (pointed at a local collector instead of `10.1.1.1`)
/// sends Envoy's lines: the server's counters and gauges under the `envoy.` prefix.
#[tokio::test(flavor = "multi_thread")]
async fn the_all_golden_serves_and_sends_statsd_like_envoy() {
    if !goldens_present() {
        return;
    }
    let Some(envoy) = reference_envoy() else {
        return;
    };
    let file = "bootstrap-all-golden-1.30.3.json";
    let mut seen = Vec::new();
    for bin in [BIN, envoy.as_str()] {
        let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let to = format!(
            "{{\"address\": \"127.0.0.1\", \"port_value\": {}}}",
            udp.local_addr().unwrap().port()
        );
        let s = Sidecar::launch_with(
            bin,
            file,
            true,
            &[("{\"address\": \"10.1.1.1\", \"port_value\": 9125}", to)],
        )
        .await;
        let (code, _) = http_get(s.health, "/healthz/ready").await.unwrap();
        assert_eq!(code, 200, "{bin}: 15021\n{}", s.logs());
        let (code, body) = http_get(s.stats, "/stats/prometheus").await.unwrap();
        assert_eq!(code, 200, "{bin}: 15090");
        assert!(body.contains("envoy_server_live"), "{bin}: {body}");
        // The first flush comes within Envoy's default 5 s interval.
        let mut lines = std::collections::BTreeSet::new();
        let mut buf = vec![0u8; 65536];
        let deadline = Instant::now() + Duration::from_secs(15);
        while !lines
            .iter()
            .any(|l: &String| l.starts_with("envoy.server.live:"))
        {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(Ok(n)) = tokio::time::timeout(left, udp.recv(&mut buf)).await else {
                panic!("{bin}: no statsd line for server.live\n{}", s.logs());
            };
            lines.insert(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        // Lines as Envoy writes them, of stats the golden's inclusion list keeps.
        let malformed: Vec<&String> = lines
            .iter()
            .filter(|l| {
                let Some((name, rest)) = l.rsplit_once(':') else {
                    return true;
                };
                let Some((v, kind)) = rest.split_once('|') else {
                    return true;
                };
                let kept = [
                    "cluster_manager",
                    "listener_manager",
                    "server",
                    "cluster.xds-grpc",
                ]
                .iter()
                .any(|p| name.starts_with(&format!("envoy.{p}")));
                v.parse::<i64>().is_err() || !["c", "g", "ms"].contains(&kind) || !kept
            })
            .collect();
        assert!(malformed.is_empty(), "{bin}: {malformed:?}");
        seen.push(lines.contains("envoy.server.live:1|g"));
    }
    assert_eq!(
        seen,
        [true, true],
        "server.live:1|g from pilotfish and Envoy"
    );
}
