//! What runs in a pod's network namespace in the capture tests: a proxy as uid 1337
//! (Istio's proxy user), and small blocking servers and clients that say who they are
//! and whom they saw.
use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::Path,
    process::{Child, Command},
    sync::Arc,
    thread,
    time::{Duration, Instant},
};

use super::netns::Netns;

/// A proxy in the pod as uid/gid 1337, its stdout and stderr collected in a file it
/// may reopen (Envoy opens `/dev/stdout` for its access logs, after dropping root).
pub struct Sidecar {
    child: Child,
    log: tempfile::NamedTempFile,
}

impl Sidecar {
    /// Starts `argv` in `pod` (working directory `cwd`) and waits until `ready` (an
    /// address and path in the pod) answers 200.
    pub fn start(
        pod: &Netns,
        argv: &[&str],
        cwd: &Path,
        ready: (&'static str, &'static str),
    ) -> Sidecar {
        use std::os::unix::fs::PermissionsExt;
        let log = tempfile::NamedTempFile::new().unwrap();
        std::fs::set_permissions(log.path(), std::fs::Permissions::from_mode(0o666)).unwrap();
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &pod.0,
                "setpriv",
                "--reuid=1337",
                "--regid=1337",
                "--clear-groups",
            ])
            .args(argv)
            .current_dir(cwd)
            .stdout(log.reopen().unwrap())
            .stderr(log.reopen().unwrap())
            .spawn()
            .unwrap();
        let up = pod
            .run(move || {
                let deadline = Instant::now() + Duration::from_secs(30);
                while Instant::now() < deadline {
                    if raw_get(ready.0, ready.1, &[]).is_some_and(|r| r.starts_with("HTTP/1.1 200"))
                    {
                        return true;
                    }
                    thread::sleep(Duration::from_millis(50));
                }
                false
            })
            .join()
            .unwrap();
        let sidecar = Sidecar { child, log };
        assert!(up, "{argv:?} did not become ready:\n{}", sidecar.output());
        sidecar
    }

    pub fn output(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    pub fn stop(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        thread::sleep(Duration::from_millis(100));
        self.output()
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---- servers (run them on a thread inside a namespace) ----

/// A server's connection: plain, or TLS as a mesh workload's sidecar would terminate
/// it.
pub trait Conn: Read + Write {}
impl<T: Read + Write> Conn for T {}

/// TLS for a test server (a workload in the mesh), or none.
pub type Tls = Option<Arc<rustls::ServerConfig>>;

pub fn serve(addr: &str, handle: impl Fn(&mut dyn Conn, SocketAddr) + Send + Sync + 'static) {
    serve_on(addr, None, handle)
}

/// [`serve`], terminating TLS with `tls` first when given.
pub fn serve_on(
    addr: &str,
    tls: Tls,
    handle: impl Fn(&mut dyn Conn, SocketAddr) + Send + Sync + 'static,
) {
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
        for mut s in l.incoming().map_while(Result::ok) {
            let peer = s.peer_addr().unwrap();
            let handle = handle.clone();
            let tls = tls.clone();
            thread::spawn(move || {
                let _ = s.set_read_timeout(Some(Duration::from_secs(20)));
                match tls {
                    None => handle(&mut s, peer),
                    Some(config) => {
                        let Ok(conn) = rustls::ServerConnection::new(config) else {
                            return;
                        };
                        let mut tls = rustls::StreamOwned::new(conn, s);
                        handle(&mut tls, peer);
                        tls.conn.send_close_notify();
                        let _ = tls.flush();
                    }
                }
            });
        }
    });
}

/// Reads a request head.
fn read_head(s: &mut dyn Conn) {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && s.read(&mut b).is_ok_and(|n| n == 1) {
        head.push(b[0]);
    }
}

/// HTTP/1.1 answering `<name> saw <peer ip>`.
pub fn http_server(addr: &str, name: &'static str) {
    http_server_on(addr, name, None)
}

pub fn http_server_on(addr: &str, name: &'static str, tls: Tls) {
    serve_on(addr, tls, move |s, peer| {
        read_head(s);
        let body = format!("{name} saw {}", peer.ip());
        let _ = write!(
            s,
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
    });
}

/// Like [`http_server`], but every odd-numbered request gets a trailers-only gRPC
/// `unavailable` (`200` with `grpc-status: 14`, no body): what istiod's default retry
/// policy retries.
pub fn unavailable_every_other(addr: &str, name: &'static str, tls: Tls) {
    let n = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    serve_on(addr, tls, move |s, peer| {
        read_head(s);
        if n.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            .is_multiple_of(2)
        {
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\ncontent-type: application/grpc\r\ngrpc-status: 14\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            );
            return;
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
pub fn line_echo(addr: &str) {
    serve(addr, |s, peer| {
        let mut line = Vec::new();
        let mut b = [0u8; 1];
        while !line.ends_with(b"\n") && s.read(&mut b).is_ok_and(|n| n == 1) {
            line.push(b[0]);
        }
        let line = String::from_utf8_lossy(&line);
        let _ = write!(s, "echo {} from {}", line.trim(), peer.ip());
    });
}

/// Speaks first, like MySQL.
pub fn server_first(addr: &str) {
    server_first_on(addr, None)
}

pub fn server_first_on(addr: &str, tls: Tls) {
    serve_on(addr, tls, |s, peer| {
        let _ = write!(s, "mysql banner to {}", peer.ip());
        let _ = s.flush();
    });
}

/// Greets on connect with `<name> saw <peer ip>`.
pub fn greeter(addr: &str, name: &'static str) {
    serve(addr, move |s, peer| {
        let _ = write!(s, "{name} saw {}", peer.ip());
    });
}

/// Reads everything the client sends and returns it after `<name>\n`.
pub fn recorder(addr: &str, name: &'static str) {
    serve(addr, move |s, peer| {
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got);
        let mut reply = format!("{name} {}\n", peer.ip()).into_bytes();
        reply.extend(got);
        let _ = s.write_all(&reply);
    });
}

// ---- clients ----

pub fn connect(addr: &str) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s
}

pub fn raw_get(addr: &str, path: &str, headers: &[(&str, &str)]) -> Option<String> {
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
pub fn get_body(addr: &str, headers: &[(&str, &str)]) -> String {
    let r = raw_get(addr, "/", headers).unwrap_or_else(|| format!("GET {addr} failed"));
    match (r.starts_with("HTTP/1.1 200"), r.split_once("\r\n\r\n")) {
        (true, Some((_, body))) => body.to_owned(),
        _ => r,
    }
}

pub fn line(addr: &str, text: &str) -> String {
    let mut s = connect(addr);
    writeln!(s, "{text}").unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

/// What a server-first service says before the client sends anything.
pub fn banner(addr: &str) -> String {
    greeting(addr)
}

pub fn greeting(addr: &str) -> String {
    let mut s = connect(addr);
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}
