//! The sidecar capture path for real: a "pod" network namespace with the iptables rules
//! from `deploy/pilotfish-iptables`, pilotfish running as uid 1337 on
//! `tests/data/istio-sidecar.yaml` (Istio's listener layout), an app in the pod, and a
//! "remote" namespace with services over a veth pair. IPv4 and IPv6. Needs root,
//! iproute2, iptables and setpriv; under `CI=true` their absence is a failure.
mod common;

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use common::{
    netns::{self, Netns, sh},
    *,
};
use pilotfish::listener::tls_hello::client_hello_bytes;

const POD: &str = "pf-pod";
const REMOTE: &str = "pf-remote";

#[test]
fn sidecar_capture_in_network_namespaces() {
    let tools = ["iptables", "ip6tables", "setpriv"].iter().all(|t| {
        Command::new("sh")
            .args(["-c", &format!("command -v {t}")])
            .output()
            .is_ok_and(|o| o.status.success())
    });
    if !require(
        "root, iproute2, iptables, ip6tables and setpriv for the capture test",
        netns::available() && tools,
    ) {
        return;
    }
    let (pod, remote) = network();
    let root = env!("CARGO_MANIFEST_DIR");
    pod.exec(&[&format!("{root}/deploy/pilotfish-iptables"), "--ipv6"]);

    // Remote services.
    let remote_ready = remote.run(|| {
        http_server("10.77.0.2:9080", "reviews-v1");
        http_server("10.77.0.3:9080", "reviews-v2");
        line_echo("0.0.0.0:7070");
        line_echo("[::]:7070");
        server_first("10.77.0.2:3306");
        recorder("10.77.0.2:443", "api");
        recorder("10.77.0.3:443", "elsewhere");
    });
    remote_ready.join().unwrap();
    // The app in the pod.
    pod.run(|| {
        http_server("0.0.0.0:8080", "app");
        http_server("[::]:8080", "app");
        greeter("0.0.0.0:9000", "app9000");
    })
    .join()
    .unwrap();

    let proxy = Sidecar::start(&pod, &format!("{root}/tests/data/istio-sidecar.yaml"));

    let outbound = pod
        .run(|| {
            vec![
                // Routed by the per-port listener 0.0.0.0_9080: the header picks v2.
                http_get("10.77.0.2:9080", &[]),
                http_get("10.77.0.2:9080", &[("end-user", "jason")]),
                // No listener for 7070: passed through to the original destination.
                line("10.77.0.2:7070", "hello"),
                // Server speaks first; the chain is plain TCP, so no inspection wait.
                banner("10.77.0.2:3306"),
                // TLS by SNI: the named service's endpoint, else passthrough; not
                // terminated.
                tls_passthrough("10.77.0.3:443", "api.remote.example"),
                tls_passthrough("10.77.0.3:443", "other.example"),
                // IPv6: the same listeners answer for [::]:<port>.
                http_get("[fd77::2]:9080", &[("end-user", "jason")]),
                line("[fd77::2]:7070", "hello6"),
            ]
        })
        .join()
        .unwrap();
    let inbound = remote
        .run(|| {
            vec![
                http_get("10.77.0.1:8080", &[]),
                greeting("10.77.0.1:9000"),
                http_get("[fd77::1]:8080", &[]),
            ]
        })
        .join()
        .unwrap();
    let stats = pod.run(scrape).join().unwrap();
    // Loops: the app (and a remote peer) connecting to the sidecar's own capture ports,
    // straight or through the capture, IPv4 and IPv6. Each connection is closed with
    // nothing forwarded; before, virtualOutbound (no listener filter, as istiod sends
    // it) forwarded them to itself until it ran out of file descriptors.
    let own_from_app = [
        "127.0.0.1:15001",
        "10.77.0.1:15001",
        "[::1]:15001",
        "[fd77::1]:15001",
        "127.0.0.1:15006",
        "10.77.0.1:15006",
        "[fd77::1]:15006",
    ];
    let own_from_remote = ["10.77.0.1:15001", "10.77.0.1:15006", "[fd77::1]:15001"];
    let app_loops = pod
        .run(move || own_from_app.map(|a| (a, greeting(a))))
        .join()
        .unwrap();
    let remote_loops = remote
        .run(move || own_from_remote.map(|a| (a, greeting(a))))
        .join()
        .unwrap();
    for (addr, got) in app_loops.iter().chain(&remote_loops) {
        assert_eq!(got, "", "a connection to the sidecar's own {addr}");
    }
    // Still serving afterwards.
    let after_loops = pod.run(|| http_get("10.77.0.2:9080", &[])).join().unwrap();
    let stats_after = pod.run(scrape).join().unwrap();
    let counters = sh(&[
        "ip",
        "netns",
        "exec",
        POD,
        "iptables-save",
        "-c",
        "-t",
        "nat",
    ]);
    let log = proxy.stop();
    eprintln!("pilotfish output:\n{log}");

    let expect_outbound = [
        "reviews-v1 saw 10.77.0.1",
        "reviews-v2 saw 10.77.0.1",
        "echo hello from 10.77.0.1",
        "mysql banner to 10.77.0.1",
        "api got the hello unchanged from 10.77.0.1",
        "elsewhere got the hello unchanged from 10.77.0.1",
        "reviews-v2 saw 10.77.0.1",
        "echo hello6 from fd77::1",
    ];
    assert_eq!(
        outbound, expect_outbound,
        "outbound, as the remote saw it\n{log}"
    );
    assert_eq!(
        inbound,
        ["app saw 127.0.0.6", "app9000 saw 127.0.0.6", "app saw ::6"],
        "inbound, as the app saw it\n{log}"
    );

    // The caller's address is visible to the proxy (access log), and SNI was read.
    for want in [
        "inbound http 200 inbound|8080|| 10.77.0.2:",
        "inbound tcp InboundPassthroughCluster 10.77.0.2:",
        "inbound http 200 inbound|8080|| [fd77::2]:",
        "outbound http 200 outbound|9080|v2|reviews.default.svc.cluster.local 10.77.0.1:",
        "outbound tls outbound|443||api.remote.example 10.77.0.1:",
        "sni=api.remote.example",
        "outbound tcp PassthroughCluster [fd77::1]:",
    ] {
        assert!(log.contains(want), "access log lacks {want:?}:\n{log}");
    }

    // Stats on the right listeners and clusters.
    let at_least = |sample: &str, n: u64| {
        let got = value(&stats, sample);
        assert!(got >= n, "{sample} = {got}, expected at least {n}\n{stats}");
    };
    let listener =
        |a: &str| format!("envoy_listener_downstream_cx_total{{envoy_listener_address=\"{a}\"}}");
    let cluster =
        |c: &str| format!("envoy_cluster_upstream_cx_total{{envoy_cluster_name=\"{c}\"}}");
    at_least(&listener("0.0.0.0_9080"), 3);
    at_least(&listener("10.77.0.2_3306"), 1);
    at_least(&listener("0.0.0.0_443"), 2);
    at_least(&listener("0.0.0.0_15001"), 2);
    at_least(&listener("0.0.0.0_15006"), 3);
    at_least(
        &cluster("outbound|9080|v2|reviews.default.svc.cluster.local"),
        2,
    );
    at_least(
        &cluster("outbound|9080|v1|reviews.default.svc.cluster.local"),
        1,
    );
    at_least(&cluster("outbound|443||api.remote.example"), 1);
    at_least(&cluster("PassthroughCluster"), 3);
    at_least(&cluster("inbound|8080||"), 2);
    at_least(&cluster("InboundPassthroughCluster"), 1);
    for line in stats
        .lines()
        .filter(|l| l.starts_with("pilotfish_listener_loop_refused{"))
    {
        assert!(line.ends_with(" 0"), "a connection looped back: {line}");
    }
    // Every loop probe refused exactly once, where it was accepted, and none reached a
    // passthrough cluster.
    let refused: u64 = ["0.0.0.0_15001", "0.0.0.0_15006"]
        .iter()
        .map(|a| {
            value(
                &stats_after,
                &format!("pilotfish_listener_loop_refused{{envoy_listener_address=\"{a}\"}}"),
            )
        })
        .sum();
    assert_eq!(
        refused as usize,
        own_from_app.len() + own_from_remote.len(),
        "{stats_after}"
    );
    for c in ["PassthroughCluster", "InboundPassthroughCluster"] {
        assert_eq!(
            value(&stats_after, &cluster(c)),
            value(&stats, &cluster(c)),
            "{c} connected for a loop probe"
        );
    }
    assert_eq!(after_loops, "reviews-v1 saw 10.77.0.1");
    // pilotfish's own upstream connections left through the uid-1337 RETURN rule.
    let own = counters
        .lines()
        .find(|l| l.ends_with("-m owner --uid-owner 1337 -j RETURN") && !l.contains("!"))
        .unwrap_or_else(|| panic!("no uid-1337 RETURN rule:\n{counters}"));
    let packets: u64 = own[1..own.find(':').unwrap()].parse().unwrap();
    assert!(
        packets > 0,
        "the proxy's connections did not pass the owner rule: {own}"
    );
}

/// The pod and remote namespaces joined by a veth pair, with IPv4 and IPv6 addresses.
fn network() -> (Netns, Netns) {
    let pod = Netns::create(POD);
    let remote = Netns::create(REMOTE);
    let _ = Command::new("ip")
        .args(["link", "del", "pf-pod0"])
        .stderr(Stdio::null())
        .status();
    sh(&[
        "ip", "link", "add", "pf-pod0", "netns", POD, "type", "veth", "peer", "name", "pf-rem0",
        "netns", REMOTE,
    ]);
    for (ns, dev, addrs) in [
        (&pod, "pf-pod0", &["10.77.0.1/24"][..]),
        (&remote, "pf-rem0", &["10.77.0.2/24", "10.77.0.3/24"][..]),
    ] {
        for a in addrs {
            ns.exec(&["ip", "addr", "add", a, "dev", dev]);
        }
        let v6 = if dev == "pf-pod0" {
            "fd77::1/64"
        } else {
            "fd77::2/64"
        };
        ns.exec(&["ip", "-6", "addr", "add", v6, "dev", dev, "nodad"]);
        ns.exec(&["ip", "link", "set", dev, "up"]);
    }
    (pod, remote)
}

/// pilotfish in the pod as uid/gid 1337, its stdout (the access logs) collected.
struct Sidecar {
    child: Child,
    out: Arc<Mutex<String>>,
}

impl Sidecar {
    fn start(pod: &Netns, config: &str) -> Sidecar {
        let mut child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &pod.0,
                "setpriv",
                "--reuid=1337",
                "--regid=1337",
                "--clear-groups",
                BIN,
            ])
            .args([
                "-c",
                config,
                "--concurrency",
                "1",
                "--stats-port",
                "15090",
                "--health-port",
                "15021",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let out = Arc::new(Mutex::new(String::new()));
        for pipe in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let out = out.clone();
            thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    let mut o = out.lock().unwrap();
                    o.push_str(&line);
                    o.push('\n');
                }
            });
        }
        let ready = pod
            .run(|| {
                let deadline = Instant::now() + Duration::from_secs(30);
                while Instant::now() < deadline {
                    if raw_get("127.0.0.1:15021", "/healthz/ready", &[])
                        .is_some_and(|r| r.starts_with("HTTP/1.1 200"))
                    {
                        return true;
                    }
                    thread::sleep(Duration::from_millis(50));
                }
                false
            })
            .join()
            .unwrap();
        let sidecar = Sidecar { child, out };
        assert!(
            ready,
            "pilotfish did not become ready:\n{}",
            sidecar.output()
        );
        sidecar
    }

    fn output(&self) -> String {
        self.out.lock().unwrap().clone()
    }

    fn stop(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        thread::sleep(Duration::from_millis(100));
        self.output()
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

// ---- servers (run on threads inside a namespace) ----

fn serve(addr: &str, handle: impl Fn(TcpStream, SocketAddr) + Send + Sync + 'static) {
    let a: SocketAddr = addr.parse().unwrap();
    let sock =
        socket2::Socket::new(socket2::Domain::for_address(a), socket2::Type::STREAM, None).unwrap();
    if a.is_ipv6() {
        // Next to a 0.0.0.0 socket on the same port.
        sock.set_only_v6(true).unwrap();
    }
    sock.set_reuse_address(true).unwrap();
    sock.bind(&a.into())
        .unwrap_or_else(|e| panic!("bind {addr}: {e}"));
    sock.listen(128).unwrap();
    let l: TcpListener = sock.into();
    let handle = Arc::new(handle);
    thread::spawn(move || {
        for s in l.incoming().map_while(Result::ok) {
            let peer = s.peer_addr().unwrap();
            let handle = handle.clone();
            thread::spawn(move || {
                let _ = s.set_read_timeout(Some(Duration::from_secs(20)));
                handle(s, peer)
            });
        }
    });
}

/// HTTP/1.1 answering `<name> saw <peer ip>`.
fn http_server(addr: &str, name: &'static str) {
    serve(addr, move |mut s, peer| {
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") && s.read(&mut b).is_ok_and(|n| n == 1) {
            head.push(b[0]);
        }
        let body = format!("{name} saw {}", peer.ip());
        let _ = write!(
            s,
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
    });
}

/// Reads a line and answers `echo <line> from <peer ip>`.
fn line_echo(addr: &str) {
    serve(addr, |s, peer| {
        let mut line = String::new();
        let _ = BufReader::new(&s).read_line(&mut line);
        let _ = write!(&s, "echo {} from {}", line.trim(), peer.ip());
    });
}

/// Speaks first, like MySQL.
fn server_first(addr: &str) {
    serve(addr, |mut s, peer| {
        let _ = write!(s, "mysql banner to {}", peer.ip());
    });
}

/// Greets on connect with `<name> saw <peer ip>`.
fn greeter(addr: &str, name: &'static str) {
    serve(addr, move |mut s, peer| {
        let _ = write!(s, "{name} saw {}", peer.ip());
    });
}

/// Reads everything the client sends and returns it after `<name>\n`.
fn recorder(addr: &str, name: &'static str) {
    serve(addr, move |mut s, peer| {
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got);
        let mut reply = format!("{name} {}\n", peer.ip()).into_bytes();
        reply.extend(got);
        let _ = s.write_all(&reply);
    });
}

// ---- clients ----

fn connect(addr: &str) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s
}

fn raw_get(addr: &str, path: &str, headers: &[(&str, &str)]) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr.parse().ok()?, Duration::from_secs(5)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(20))).ok()?;
    let mut req = format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

/// The body of a GET, or the whole response when it is not a 200.
fn http_get(addr: &str, headers: &[(&str, &str)]) -> String {
    let r = raw_get(addr, "/", headers).unwrap_or_else(|| format!("GET {addr} failed"));
    match (r.starts_with("HTTP/1.1 200"), r.split_once("\r\n\r\n")) {
        (true, Some((_, body))) => body.to_owned(),
        _ => r,
    }
}

fn line(addr: &str, text: &str) -> String {
    let mut s = connect(addr);
    writeln!(s, "{text}").unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

/// What a server-first service says before the client sends anything.
fn banner(addr: &str) -> String {
    greeting(addr)
}

fn greeting(addr: &str) -> String {
    let mut s = connect(addr);
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

/// Sends a ClientHello with `sni` and reports which server got it and whether the bytes
/// arrived unchanged.
fn tls_passthrough(addr: &str, sni: &str) -> String {
    let hello = client_hello_bytes(Some(sni), &["h2", "http/1.1"], 1);
    let mut s = connect(addr);
    s.write_all(&hello).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut reply = Vec::new();
    let _ = s.read_to_end(&mut reply);
    let Some(nl) = reply.iter().position(|&b| b == b'\n') else {
        return format!("no reply from {addr}");
    };
    let who = String::from_utf8_lossy(&reply[..nl]).into_owned();
    let (name, peer) = who.split_once(' ').unwrap_or((&who, "?"));
    if reply[nl + 1..] == hello[..] {
        format!("{name} got the hello unchanged from {peer}")
    } else {
        format!("{name} got {} different bytes", reply.len() - nl - 1)
    }
}

fn scrape() -> String {
    raw_get("127.0.0.1:15090", "/stats/prometheus", &[]).unwrap_or_default()
}

/// The value of one Prometheus sample (0 when absent).
fn value(stats: &str, sample: &str) -> u64 {
    stats
        .lines()
        .find_map(|l| l.strip_prefix(sample)?.trim().parse().ok())
        .unwrap_or(0)
}
