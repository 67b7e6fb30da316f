//! The sidecar capture path for real: a "pod" network namespace with the iptables rules
//! from `deploy/pilotfish-iptables`, pilotfish running as uid 1337 on
//! `tests/data/istio-sidecar.yaml` (Istio's listener layout), an app in the pod, and a
//! "remote" namespace with services over a veth pair. IPv4 and IPv6. Needs root,
//! iproute2, iptables and setpriv; under `CI=true` their absence is a failure.
mod common;

use std::{
    io::{Read, Write},
    net::Shutdown,
    path::Path,
    process::{Command, Stdio},
};

use common::{
    netns::{self, Netns, sh},
    pod::*,
    *,
};
use pilotfish::listener::tls_hello::client_hello_bytes;

const POD: &str = "pf-pod";
const REMOTE: &str = "pf-remote";

#[test]
fn sidecar_capture_in_network_namespaces() {
    if !require(
        "root, iproute2, iptables, ip6tables and setpriv for the capture test",
        netns::available_with(&["iptables", "ip6tables", "setpriv"]),
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

    let config = format!("{root}/tests/data/istio-sidecar.yaml");
    let proxy = Sidecar::start(
        &pod,
        &[
            BIN,
            "-c",
            &config,
            "--concurrency",
            "1",
            "--stats-port",
            "15090",
            "--health-port",
            "15021",
            // Each access-log line at once: the test reads them right after the traffic.
            "--file-flush-interval-msec",
            "0",
        ],
        Path::new(root),
        ("127.0.0.1:15021", "/healthz/ready"),
    );

    let outbound = pod
        .run(|| {
            vec![
                // Routed by the per-port listener 0.0.0.0_9080: the header picks v2.
                get_body("10.77.0.2:9080", &[]),
                get_body("10.77.0.2:9080", &[("end-user", "jason")]),
                // No listener for 7070: passed through to the original destination.
                line("10.77.0.2:7070", "hello"),
                // Server speaks first; the chain is plain TCP, so no inspection wait.
                banner("10.77.0.2:3306"),
                // TLS by SNI: the named service's endpoint, else passthrough; not
                // terminated.
                tls_passthrough("10.77.0.3:443", "api.remote.example"),
                tls_passthrough("10.77.0.3:443", "other.example"),
                // IPv6: the same listeners answer for [::]:<port>.
                get_body("[fd77::2]:9080", &[("end-user", "jason")]),
                line("[fd77::2]:7070", "hello6"),
            ]
        })
        .join()
        .unwrap();
    let inbound = remote
        .run(|| {
            vec![
                get_body("10.77.0.1:8080", &[]),
                greeting("10.77.0.1:9000"),
                get_body("[fd77::1]:8080", &[]),
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
    let after_loops = pod.run(|| get_body("10.77.0.2:9080", &[])).join().unwrap();
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
