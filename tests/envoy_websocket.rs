//! WebSocket upgrades, differentially: the same `upgrade_configs` in Envoy 1.40 and
//! pilotfish; an allowed upgrade must reach the upstream with its upgrade headers, come
//! back as `101` and carry bytes both ways; a disallowed one is refused the same way.
mod common;

use std::net::SocketAddr;

use common::*;
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{TcpListener, TcpStream},
};

/// An upstream that switches protocols on any path but `/no`, then echoes upper-cased;
/// it hands back the request head it saw on each connection.
async fn ws_upstream() -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<String>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut s = BufReader::new(s);
                let head = read_head(&mut s).await;
                let _ = tx.send(head.clone());
                if head.starts_with("GET /no") {
                    let _ = s
                        .get_mut()
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nno")
                        .await;
                    return;
                }
                let _ = s
                    .get_mut()
                    .write_all(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n")
                    .await;
                let mut buf = [0u8; 1024];
                loop {
                    let n = match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    let up = buf[..n].to_ascii_uppercase();
                    if s.get_mut().write_all(&up).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, rx)
}

async fn read_head<R: AsyncBufReadExt + Unpin>(r: &mut R) -> String {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).await.unwrap_or(0) == 0 || line == "\r\n" {
            return head;
        }
        head.push_str(&line);
    }
}

fn bootstrap(up: SocketAddr) -> String {
    let routes = r#"              - match: { prefix: "/off" }
                route: { cluster: ws, upgrade_configs: [{ upgrade_type: websocket, enabled: false }] }
              - match: { prefix: "/" }
                route: { cluster: ws, timeout: 1s }"#;
    http_bootstrap(routes, &static_cluster("ws", &[up], false)).replace(
        "          http_filters:\n",
        // A header timeout shorter than the tunnel's pauses: a tunnel has no heads.
        "          upgrade_configs: [{ upgrade_type: websocket }]\n          request_headers_timeout: 0.3s\n          http_filters:\n",
    )
}

#[derive(Debug, PartialEq)]
struct Outcome {
    status_line: String,
    upgrade_header: Option<String>,
    echoed: Option<String>,
    upstream_saw_upgrade: bool,
}

async fn run(
    proxy: &Proxy,
    seen: &mut tokio::sync::mpsc::UnboundedReceiver<String>,
    path: &str,
) -> Outcome {
    let mut s = BufReader::new(TcpStream::connect(proxy.listener("http")).await.unwrap());
    let req = format!(
        "GET {path} HTTP/1.1\r\nhost: chat\r\nconnection: Upgrade\r\nupgrade: websocket\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n"
    );
    s.get_mut().write_all(req.as_bytes()).await.unwrap();
    let head = read_head(&mut s).await;
    let status_line = head.lines().next().unwrap_or("").to_owned();
    let upgrade_header = head.lines().find_map(|l| {
        l.to_ascii_lowercase()
            .strip_prefix("upgrade: ")
            .map(str::to_owned)
    });
    let mut echoed = None;
    if status_line.contains(" 101 ") {
        // Well past the route's 1 s timeout: an upgraded connection has none.
        tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
        s.get_mut()
            .write_all(b"hello over the tunnel")
            .await
            .unwrap();
        let mut buf = vec![0u8; 21];
        s.read_exact(&mut buf).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(600)).await;
        s.get_mut().write_all(b" and again").await.unwrap();
        let mut again = vec![0u8; 10];
        s.read_exact(&mut again).await.unwrap();
        buf.extend_from_slice(&again);
        echoed = Some(String::from_utf8_lossy(&buf).into_owned());
    }
    let upstream_saw_upgrade =
        tokio::time::timeout(std::time::Duration::from_millis(300), seen.recv())
            .await
            .ok()
            .flatten()
            .is_some_and(|h| {
                let h = h.to_ascii_lowercase();
                h.contains("upgrade: websocket") && h.contains("connection: upgrade")
            });
    Outcome {
        status_line,
        upgrade_header,
        echoed,
        upstream_saw_upgrade,
    }
}

#[tokio::test]
async fn websocket_upgrades_match_envoy() {
    let Some(envoy) = reference_envoy() else {
        return;
    };
    let (up, mut seen) = ws_upstream().await;
    let yaml = bootstrap(up);
    let ours = Proxy::start(&yaml).await;
    let theirs = Proxy::start_bin(&envoy, &yaml, &["--disable-hot-restart"]).await;
    for path in ["/chat", "/off", "/no"] {
        let want = run(&theirs, &mut seen, path).await;
        let got = run(&ours, &mut seen, path).await;
        assert_eq!(
            got, want,
            "{path}: pilotfish (left) and Envoy (right) differ"
        );
    }
    assert_same_samples(
        &ours,
        &theirs,
        &[
            "envoy_http_downstream_cx_upgrades_total{envoy_http_conn_manager_prefix=\"ingress_http\"}",
            "envoy_http_downstream_rq_ws_on_non_ws_route{envoy_http_conn_manager_prefix=\"ingress_http\"}",
        ],
    )
    .await;
}
