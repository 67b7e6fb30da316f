//! Readiness before the config is applied, observed for real: pilotfish runs in its own
//! network namespace whose resolver (`/etc/netns/<ns>/resolv.conf`, which `ip netns
//! exec` mounts) points at a DNS server that never answers, so the first resolution of
//! a STRICT_DNS cluster holds initialization. `/healthz/ready` must answer 503 then,
//! and 200 once initialization is over. Needs root and `ip` (iproute2).
mod common;

use std::{
    io::{Read, Write},
    net::TcpStream,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use common::{netns::Netns, *};

fn health_status(port: u16) -> Option<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"GET /healthz/ready HTTP/1.0\r\n\r\n").ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    buf.split(' ').nth(1)?.parse().ok()
}

#[test]
fn health_is_503_until_initialization_completes() {
    if !require(
        "root and iproute2 for network namespaces",
        netns::available(),
    ) {
        return;
    }
    let ns = Netns::create("pf-readiness");
    std::fs::create_dir_all("/etc/netns/pf-readiness").unwrap();
    std::fs::write(
        "/etc/netns/pf-readiness/resolv.conf",
        "nameserver 127.0.0.1\noptions timeout:3 attempts:1\n",
    )
    .unwrap();
    // A DNS server that reads queries and never answers.
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    ns.run(move || {
        let sock = std::net::UdpSocket::bind("127.0.0.1:53").unwrap();
        ready_tx.send(()).unwrap();
        let mut buf = [0u8; 512];
        let deadline = Instant::now() + Duration::from_secs(60);
        sock.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        while Instant::now() < deadline {
            let _ = sock.recv(&mut buf);
        }
    });
    ready_rx.recv().unwrap();

    let yaml = r#"
admin: { address: { socket_address: { address: 127.0.0.1, port_value: 19000 } } }
static_resources:
  clusters:
  - name: slow_dns
    type: STRICT_DNS
    connect_timeout: 1s
    load_assignment:
      cluster_name: slow_dns
      endpoints:
      - lb_endpoints:
        - endpoint: { address: { socket_address: { address: never.answers.example, port_value: 80 } } }
"#;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("b.yaml");
    std::fs::write(&cfg, yaml).unwrap();
    let mut child = Command::new("ip")
        .args([
            "netns",
            "exec",
            "pf-readiness",
            BIN,
            "--health-port",
            "19021",
            "-c",
        ])
        .arg(&cfg)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    let seen = ns
        .run(|| {
            let mut seen = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if let Some(code) = health_status(19021)
                    && seen.last() != Some(&code)
                {
                    seen.push(code);
                    if code == 200 {
                        break;
                    }
                }
                thread::sleep(Duration::from_millis(20));
            }
            seen
        })
        .join()
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(seen, [503, 200], "health answers seen in order");
}
