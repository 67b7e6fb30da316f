//! Istio end to end: bookinfo's `productpage-v1` sidecar, configured as istiod 1.30
//! configures it (`tests/data/istio/productpage-1.30.json`, see its README), in a pod
//! network namespace behind Istio's iptables rules, started as pilot-agent starts the
//! proxy (uid 1337, `-c etc/istio/proxy/envoy-rev.json` from Istio's rendered bootstrap
//! with pilot-agent's flags, xDS over the agent's Unix socket, delta ADS).
//!
//! 1. The measure: the complete configuration is served over ADS and every element
//!    pilotfish NACKs is taken out of its resource, one NACK at a time, until every type
//!    is ACKed. The list of elements taken out must be the checked-in
//!    `productpage-1.30.rejected`: an element pilotfish starts to reject fails the test,
//!    and so does one it starts to accept (the list then shrinks, on purpose).
//! 2. The app's traffic through the capture on what was accepted: outbound by service
//!    name, FQDN and ClusterIP through `virtualOutbound` → the per-port listener → RDS →
//!    the subset the VirtualService picks (`end-user: jason` → reviews v2, else v1), a
//!    TCP service by its ClusterIP listener, unknown destinations through
//!    `PassthroughCluster`; istiod's retry policy recovering a gRPC `unavailable`;
//!    inbound HTTP on the service port and passthrough to other
//!    ports, from 127.0.0.6.
//! 3. The same requests through Envoy 1.40, on the same bootstrap and the same served
//!    configuration (less the filters only Istio's build of Envoy has, such as
//!    `istio.alpn` and the peer metadata exchange): the same answers.
mod common;

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use common::{
    istio::*,
    netns::{self, Netns, sh},
    pod::*,
    xds::*,
    *,
};
use envoy_types::pb::google::protobuf::Any;
use prost::Message;
use prost_reflect::DescriptorPool;
use serde_json::Value;

const POD: &str = "pf-ipod";
const CLUSTER: &str = "pf-icluster";
const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/istio");

/// pilotfish's descriptor pool: it has Istio's filter configs too, so the test encodes
/// istiod's resources (some of them plain `Any`s of Istio's types) as istiod does.
fn istio_pool() -> DescriptorPool {
    pilotfish::config::proto::pool()
}

/// Takes out of `doc` every filter whose config is one of Istio's own types (which
/// only istio-proxy, not upstream Envoy, can load); returns how many.
fn without_istio_filters(doc: &mut Value) -> usize {
    fn istio_only(filter: &Value) -> bool {
        let config = &filter["typed_config"];
        let url = config["type_url"]
            .as_str()
            .or(config["@type"].as_str())
            .unwrap_or_default();
        let name = url.rsplit('/').next().unwrap_or_default();
        [
            "istio.",
            "io.istio.",
            "stats.",
            "envoy.tcp.metadataexchange.",
        ]
        .iter()
        .any(|p| name.starts_with(p))
    }
    fn walk(v: &mut Value, n: &mut usize) {
        match v {
            Value::Object(map) => {
                for key in ["http_filters", "filters"] {
                    if let Some(Value::Array(list)) = map.get_mut(key) {
                        let before = list.len();
                        list.retain(|f| !istio_only(f));
                        *n += before - list.len();
                    }
                }
                map.values_mut().for_each(|v| walk(v, n));
            }
            Value::Array(items) => items.iter_mut().for_each(|v| walk(v, n)),
            _ => {}
        }
    }
    let mut n = 0;
    walk(doc, &mut n);
    n
}

/// One resource type of the configuration, as served.
struct Kind {
    type_url: &'static str,
    key: &'static str,
    message: &'static str,
    /// The name field (`cluster_name` for endpoints).
    name: &'static str,
}

const KINDS: [Kind; 4] = [
    Kind {
        type_url: CDS,
        key: "clusters",
        message: "envoy.config.cluster.v3.Cluster",
        name: "name",
    },
    Kind {
        type_url: EDS,
        key: "endpoints",
        message: "envoy.config.endpoint.v3.ClusterLoadAssignment",
        name: "cluster_name",
    },
    Kind {
        type_url: LDS,
        key: "listeners",
        message: "envoy.config.listener.v3.Listener",
        name: "name",
    },
    Kind {
        type_url: RDS,
        key: "routes",
        message: "envoy.config.route.v3.RouteConfiguration",
        name: "name",
    },
];

fn encode(pool: &DescriptorPool, kind: &Kind, resources: &[Value]) -> Vec<(String, Any)> {
    let desc = pool.get_message_by_name(kind.message).unwrap();
    resources
        .iter()
        .map(|r| {
            let msg = pilotfish::config::proto::from_json(desc.clone(), r.clone())
                .unwrap_or_else(|e| panic!("{}: {e}", kind.message));
            let name = r[kind.name].as_str().unwrap().to_owned();
            let any = Any {
                type_url: kind.type_url.into(),
                value: msg.encode_to_vec(),
            };
            (name, any)
        })
        .collect()
}

/// `a.b[0]["k"].c` → steps.
#[derive(Debug)]
enum Step {
    Key(String),
    Index(usize),
}

fn parse_path(path: &str) -> Vec<Step> {
    let mut out = Vec::new();
    let mut rest = path;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix("[\"") {
            let end = r.find("\"]").unwrap();
            out.push(Step::Key(r[..end].into()));
            rest = &r[end + 2..];
        } else if let Some(r) = rest.strip_prefix('[') {
            let end = r.find(']').unwrap();
            out.push(Step::Index(r[..end].parse().unwrap()));
            rest = &r[end + 1..];
        } else {
            let r = rest.strip_prefix('.').unwrap_or(rest);
            let end = r.find(['.', '[']).unwrap_or(r.len());
            out.push(Step::Key(r[..end].into()));
            rest = &r[end..];
        }
    }
    out
}

/// Removes the element at `path` (a TypedStruct's fields sit under its `value`).
fn remove(doc: &mut Value, path: &str) -> bool {
    let steps = parse_path(path);
    let Some((last, walk)) = steps.split_last() else {
        return false;
    };
    let mut node = doc;
    for s in walk {
        node = match s {
            Step::Key(k) => {
                if node.get(k).is_none() && node.get("value").is_some_and(|v| v.get(k).is_some()) {
                    node = &mut node["value"];
                }
                match node.get_mut(k) {
                    Some(n) => n,
                    None => return false,
                }
            }
            Step::Index(i) => match node.get_mut(*i) {
                Some(n) => n,
                None => return false,
            },
        };
    }
    match last {
        Step::Key(k) => {
            if node.get(k).is_none() && node.get("value").is_some_and(|v| v.get(k).is_some()) {
                node = &mut node["value"];
            }
            node.as_object_mut().and_then(|o| o.remove(k)).is_some()
        }
        Step::Index(i) => match node.as_array_mut() {
            Some(a) if *i < a.len() => {
                a.remove(*i);
                true
            }
            _ => false,
        },
    }
}

/// One NACK's errors: (resource name, element path and label, reason).
fn nack_errors(detail: &str) -> Vec<(String, String, String)> {
    let nouns = [
        "listener '",
        "cluster '",
        "ClusterLoadAssignment '",
        "RouteConfiguration '",
    ];
    let mut starts: Vec<usize> = nouns
        .iter()
        .flat_map(|n| detail.match_indices(n).map(|(i, _)| i))
        .filter(|&i| i == 0 || detail[..i].ends_with("; "))
        .collect();
    starts.sort();
    starts.dedup();
    let mut out = Vec::new();
    for (k, &s) in starts.iter().enumerate() {
        let end = starts.get(k + 1).map_or(detail.len(), |&e| e - 2);
        let one = &detail[s..end];
        let open = one.find('\'').unwrap();
        let close = open + 1 + one[open + 1..].find("': ").unwrap();
        let name = one[open + 1..close].to_owned();
        let rest = &one[close + 3..];
        let (elem, reason) = rest
            .split_once(": ")
            .unwrap_or_else(|| panic!("cannot locate the element in: {one}"));
        out.push((name, elem.to_owned(), reason.to_owned()));
    }
    assert!(!out.is_empty(), "unparsed NACK: {detail}");
    out
}

/// Serves `doc`'s resources of each type in turn (clusters, endpoints, listeners,
/// routes), and takes out of them whatever pilotfish NACKs, until the type is ACKed.
/// A NACKed response is applied in nothing, and delta xDS does not send again what did
/// not change: so once a type is ACKed the proxy is started afresh (`start`), to hold
/// all of it before the next type depends on it. Returns what was taken out, as
/// `<type> '<name>': <element>: <reason>`, and the proxy.
async fn strip_until_accepted(
    xds: &XdsServer,
    pool: &DescriptorPool,
    doc: &mut Value,
    start: impl Fn() -> Sidecar,
) -> (Vec<String>, Sidecar) {
    let mut removed = Vec::new();
    let mut proxy = start();
    for kind in &KINDS {
        for round in 0.. {
            assert!(round < 500, "{} never accepted", kind.key);
            let t0 = Instant::now();
            let resources = doc[kind.key].as_array().unwrap().clone();
            xds.set(kind.type_url, encode(pool, kind, &resources));
            let deadline = t0 + Duration::from_secs(20);
            let answer = loop {
                let found = xds.find_request(|r| {
                    r.type_url == kind.type_url && r.at > t0 && !r.nonce.is_empty()
                });
                if let Some(a) = found {
                    break a;
                }
                assert!(
                    Instant::now() < deadline,
                    "no answer to {}; the proxy says:\n{}",
                    kind.key,
                    proxy.output()
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            };
            let Some(detail) = answer.error else { break };
            for (name, elem, reason) in nack_errors(&detail) {
                // An extension of a type pilotfish does not know: the element is the
                // extension (the filter), not its type field.
                let elem = match elem.strip_suffix(".typed_config.type_url") {
                    Some(owner) if reason.starts_with("unknown type") => owner.to_owned(),
                    _ => elem,
                };
                let elem_path = elem.split(" (").next().unwrap().to_owned();
                let list = doc[kind.key].as_array_mut().unwrap();
                let resource = list
                    .iter_mut()
                    .find(|r| r[kind.name] == name.as_str())
                    .unwrap_or_else(|| panic!("NACK names no served {}: {name}", kind.key));
                assert!(
                    remove(resource, &elem_path),
                    "cannot take {elem_path} out of {} '{name}' ({reason})",
                    kind.key
                );
                removed.push(format!("{} '{name}': {elem}: {reason}", kind.key));
            }
        }
        proxy.stop();
        let t0 = Instant::now();
        proxy = start();
        let deadline = t0 + Duration::from_secs(20);
        // The fresh proxy ACKs this type (whose resources were subscribed) in full.
        while kind.type_url != RDS || !doc[kind.key].as_array().unwrap().is_empty() {
            let acked = xds
                .find_request(|r| r.type_url == kind.type_url && r.at > t0 && !r.nonce.is_empty());
            if let Some(a) = acked {
                assert_eq!(a.error, None, "{} NACKed after a restart", kind.key);
                break;
            }
            assert!(Instant::now() < deadline, "{} not sent again", kind.key);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    (removed, proxy)
}

// ---- the pod ----

/// The pod (10.244.0.10) and the rest of the cluster (other pods on 10.244.0.0/24,
/// Service ClusterIPs on 10.96.0.0/16 routed there, as kube-proxy's node would).
fn network() -> (Netns, Netns) {
    let pod = Netns::create(POD);
    let cluster = Netns::create(CLUSTER);
    let _ = Command::new("ip")
        .args(["link", "del", "pf-ipod0"])
        .output();
    sh(&[
        "ip", "link", "add", "pf-ipod0", "netns", POD, "type", "veth", "peer", "name", "pf-icl0",
        "netns", CLUSTER,
    ]);
    pod.exec(&["ip", "addr", "add", "10.244.0.10/24", "dev", "pf-ipod0"]);
    pod.exec(&["ip", "link", "set", "pf-ipod0", "up"]);
    pod.exec(&["ip", "route", "add", "10.96.0.0/16", "dev", "pf-ipod0"]);
    for last in [21, 22, 23, 24, 25, 26, 30] {
        cluster.exec(&[
            "ip",
            "addr",
            "add",
            &format!("10.244.0.{last}/24"),
            "dev",
            "pf-icl0",
        ]);
    }
    cluster.exec(&["ip", "link", "set", "pf-icl0", "up"]);
    (pod, cluster)
}

/// A GET with its own `Host`, from the namespace the calling thread is in; the body,
/// or the status line when it is not a 200.
fn get(addr: &str, host: &str, headers: &[(&str, &str)]) -> String {
    let Ok(mut s) = TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(5))
    else {
        return format!("connect {addr} failed");
    };
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut req = format!("GET / HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let _ = s.write_all(req.as_bytes());
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    match (out.starts_with("HTTP/1.1 200"), out.split_once("\r\n\r\n")) {
        (true, Some((_, body))) => body.to_owned(),
        _ => out.lines().next().unwrap_or("no answer").to_owned(),
    }
}

/// What the app in the pod gets outbound, and what a client in the cluster gets from
/// the pod inbound.
fn traffic(
    pod: &Netns,
    cluster: &Netns,
    mesh_client: &std::sync::Arc<rustls::ClientConfig>,
) -> BTreeMap<&'static str, String> {
    let mesh_client = mesh_client.clone();
    let mut out: BTreeMap<&'static str, String> = pod
        .run(|| {
            BTreeMap::from([
                (
                    "reviews by name",
                    get("10.96.10.14:9080", "reviews:9080", &[]),
                ),
                (
                    "reviews for jason",
                    get("10.96.10.14:9080", "reviews:9080", &[("end-user", "jason")]),
                ),
                (
                    "details by FQDN",
                    get(
                        "10.96.10.11:9080",
                        "details.default.svc.cluster.local:9080",
                        &[],
                    ),
                ),
                (
                    "ratings by ClusterIP, retried on gRPC unavailable",
                    get("10.96.10.13:9080", "10.96.10.13:9080", &[]),
                ),
                (
                    "HTTP to a host outside the mesh",
                    get("10.244.0.30:9080", "10.244.0.30:9080", &[]),
                ),
                ("mysqldb by ClusterIP (TCP)", greeting("10.96.10.15:3306")),
                ("TCP outside the mesh", line("10.244.0.30:7070", "hello")),
            ])
        })
        .join()
        .unwrap();
    out.extend(
        cluster
            .run(move || {
                [
                    (
                        "inbound HTTP over mTLS from a mesh client",
                        tls_get("10.244.0.10:9080", "productpage:9080", mesh_client),
                    ),
                    (
                        "inbound HTTP on the service port",
                        get("10.244.0.10:9080", "productpage:9080", &[]),
                    ),
                    (
                        "inbound HTTP on another port",
                        get("10.244.0.10:8000", "10.244.0.10:8000", &[]),
                    ),
                    // Client first: with istiod's `listener_filters_timeout: 0s` the
                    // inspectors wait for the client's bytes (in Envoy too).
                    (
                        "inbound TCP on another port",
                        line("10.244.0.10:8001", "hello"),
                    ),
                ]
            })
            .join()
            .unwrap(),
    );
    out
}

/// SPIFFE IDs of the bookinfo service accounts.
const SA: &str = "spiffe://cluster.local/ns/default/sa/";

/// Where Istio's bootstrap looks for the agent's SDS socket, under the sidecar's
/// working directory (`./var/run/secrets/workload-spiffe-uds/test.sock` in the golden).
fn sds_dir(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let d = dir.join("var/run/secrets/workload-spiffe-uds");
    std::fs::create_dir_all(&d).unwrap();
    for p in [
        dir.join("var"),
        dir.join("var/run"),
        dir.join("var/run/secrets"),
        d.clone(),
    ] {
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    d.join("test.sock")
}

/// GET over mTLS with `client`: the status line and body, or what went wrong.
fn tls_get(addr: &str, host: &str, client: std::sync::Arc<rustls::ClientConfig>) -> String {
    let tcp = match TcpStream::connect(addr) {
        Ok(t) => t,
        Err(e) => return format!("connect: {e}"),
    };
    let _ = tcp.set_read_timeout(Some(Duration::from_secs(10)));
    let name = rustls::pki_types::ServerName::try_from("productpage").unwrap();
    let conn = rustls::ClientConnection::new(client, name).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    if let Err(e) = write!(
        tls,
        "GET / HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n"
    ) {
        return format!("TLS: {e}");
    }
    let mut out = Vec::new();
    let _ = tls.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out);
    let status = text.lines().next().unwrap_or_default().to_owned();
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default();
    format!("{status} | {body}")
}

/// Istio's rendered bootstrap where pilot-agent writes it (`etc/istio/proxy/` under the
/// proxy's working directory), the xDS socket moved next to it.
fn agent_dir(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let etc = dir.join("etc/istio/proxy");
    std::fs::create_dir_all(&etc).unwrap();
    let xds = etc.join("XDS");
    let golden = golden("bootstrap-default-golden-1.30.3.json");
    assert!(golden.contains("\"/tmp/XDS\""));
    let rendered = golden.replace("\"/tmp/XDS\"", &format!("{:?}", xds.display().to_string()));
    std::fs::write(etc.join("envoy-rev.json"), rendered).unwrap();
    for d in [
        dir.to_owned(),
        dir.join("etc"),
        dir.join("etc/istio"),
        etc.clone(),
    ] {
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    xds
}

fn agent_argv(bin: &str) -> Vec<String> {
    let mut argv = vec![
        bin.to_owned(),
        "-c".into(),
        "etc/istio/proxy/envoy-rev.json".into(),
    ];
    argv.extend(AGENT_FLAGS.iter().map(|s| s.to_string()));
    argv
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn productpage_sidecar_as_istiod_configures_it() {
    if !require(
        "root, iproute2, iptables and setpriv for the Istio sidecar test",
        netns::available_with(&["iptables", "setpriv"]),
    ) || !goldens_present()
    {
        return;
    }
    let Some(envoy) = reference_envoy() else {
        return;
    };
    let (pod, cluster) = network();
    pod.exec(&[concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/pilotfish-iptables"
    )]);
    // The mesh's workloads answer through their sidecars' mTLS (the endpoints carry
    // `tlsMode: istio`), each with its service account's SPIFFE certificate from
    // Istio's CA; the host outside the mesh answers in plaintext.
    let ca = common::certs::Ca::new("cluster.local");
    let sa = |name: &str| common::certs::server_config(&ca, &format!("{SA}{name}"));
    let mesh = [
        sa("bookinfo-details"),
        sa("bookinfo-ratings"),
        sa("bookinfo-reviews"),
        sa("default"),
    ];
    cluster
        .run(move || {
            let [details, ratings, reviews, default] = mesh;
            http_server_on("10.244.0.21:9080", "details-v1", Some(details));
            // Fails every other request the way istiod's retry policy retries.
            unavailable_every_other("10.244.0.22:9080", "ratings-v1", Some(ratings));
            http_server_on("10.244.0.23:9080", "reviews-v1", Some(reviews.clone()));
            http_server_on("10.244.0.24:9080", "reviews-v2", Some(reviews.clone()));
            http_server_on("10.244.0.25:9080", "reviews-v3", Some(reviews));
            server_first_on("10.244.0.26:3306", Some(default));
            http_server("10.244.0.30:9080", "outside");
            line_echo("10.244.0.30:7070");
        })
        .join()
        .unwrap();
    pod.run(|| {
        http_server("0.0.0.0:9080", "productpage");
        http_server("0.0.0.0:8000", "app8000");
        line_echo("0.0.0.0:8001");
    })
    .join()
    .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let socket = agent_dir(dir.path());
    let xds = XdsServer::start_unix(&socket).await;
    // The agent's SDS socket, serving productpage's certificate and Istio's root.
    let sds_socket = sds_dir(dir.path());
    let sds = XdsServer::start_unix(&sds_socket).await;
    sds.set(
        common::certs::SECRET,
        common::certs::istio_secrets(&ca, &ca.leaf(&format!("{SA}bookinfo-productpage"))),
    );
    {
        use std::os::unix::fs::PermissionsExt;
        for s in [&socket, &sds_socket] {
            std::fs::set_permissions(s, std::fs::Permissions::from_mode(0o777)).unwrap();
        }
    }
    // A client sidecar in the mesh (reviews) calling productpage over mTLS, offering
    // the ALPN an Envoy sidecar's `istio.alpn` sets for HTTP/1.1.
    let mesh_client = common::certs::client_config(
        &ca,
        &ca.leaf(&format!("{SA}bookinfo-reviews")),
        &format!("{SA}bookinfo-productpage"),
        &["istio-http/1.1", "istio", "http/1.1"],
    );
    let pool = istio_pool();
    let mut doc: Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{DATA}/productpage-1.30.json")).unwrap(),
    )
    .unwrap();

    // 1. What pilotfish rejects of istiod's configuration.
    let argv = agent_argv(BIN);
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let start = || Sidecar::start(&pod, &argv, dir.path(), ("127.0.0.1:15000", "/server_info"));
    let (removed, ours) = strip_until_accepted(&xds, &pool, &mut doc, start).await;
    let expected =
        std::fs::read_to_string(format!("{DATA}/productpage-1.30.rejected")).unwrap_or_default();
    let expected: Vec<&str> = expected
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    if removed != expected {
        std::fs::write(
            format!("{DATA}/productpage-1.30.rejected.new"),
            removed.join("\n") + "\n",
        )
        .unwrap();
    }
    assert_eq!(
        removed, expected,
        "what pilotfish rejects changed (the new list is in productpage-1.30.rejected.new)"
    );

    // 2. The app's traffic on what was accepted.
    let wait_ready = |what: &'static str| {
        pod.run(move || {
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if raw_get("127.0.0.1:15000", "/ready", &[])
                    .is_some_and(|r| r.starts_with("HTTP/1.1 200"))
                {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            panic!("{what} did not get ready");
        })
        .join()
        .unwrap()
    };
    wait_ready("pilotfish");
    let pilotfish_answers = traffic(&pod, &cluster, &mesh_client);
    let scraped = pod
        .run(|| raw_get("127.0.0.1:15090", "/stats/prometheus", &[]).unwrap_or_default())
        .join()
        .unwrap();
    let log = ours.stop();
    // Istio's standard metrics (`istio.stats`) on 15090, as istio-proxy labels the
    // same traffic (the golden node has no workload metadata: local labels are empty;
    // the upstreams here have no sidecar: their side is `unknown`).
    for (what, name, fragments, want) in [
        (
            "outbound HTTP over mTLS",
            "istio_requests_total",
            &[
                "reporter=\"source\"",
                "source_workload=\"\"",
                "source_principal=\"spiffe://cluster.local/ns/default/sa/bookinfo-productpage\"",
                // The upstream has no sidecar to answer with its metadata: the endpoint's
                // `istio.workload` names it (no app, version or identity there).
                "destination_workload=\"details-v1\",destination_workload_namespace=\"default\",destination_principal=\"spiffe://cluster.local/ns/default/sa/bookinfo-details\",destination_app=\"unknown\",destination_version=\"unknown\"",
                "destination_service=\"details.default.svc.cluster.local\",destination_canonical_service=\"details\",destination_canonical_revision=\"v1\",destination_service_name=\"details\",destination_service_namespace=\"default\",destination_cluster=\"Kubernetes\"",
                "request_protocol=\"http\",response_code=\"200\",grpc_response_status=\"\",response_flags=\"-\",connection_security_policy=\"unknown\"}",
            ][..],
            1,
        ),
        (
            "inbound HTTP over mTLS",
            "istio_requests_total",
            &[
                "reporter=\"destination\"",
                "source_workload_namespace=\"default\",source_principal=\"spiffe://cluster.local/ns/default/sa/bookinfo-reviews\"",
                "destination_principal=\"spiffe://cluster.local/ns/default/sa/bookinfo-productpage\"",
                "destination_service=\"productpage.default.svc.cluster.local\"",
                "connection_security_policy=\"mutual_tls\"}",
            ][..],
            1,
        ),
        (
            "outbound HTTP outside the mesh",
            "istio_requests_total",
            &[
                "reporter=\"source\"",
                "destination_service=\"10.244.0.30:9080\"",
                "destination_service_name=\"PassthroughCluster\"",
            ][..],
            1,
        ),
        (
            "outbound TCP to mysqldb",
            "istio_tcp_connections_opened_total",
            &[
                "reporter=\"source\"",
                "destination_service=\"mysqldb.default.svc.cluster.local\"",
                "request_protocol=\"tcp\",response_flags=\"-\",connection_security_policy=\"unknown\"}",
            ][..],
            1,
        ),
    ] {
        let found: Vec<&str> = scraped
            .lines()
            .filter(|l| {
                l.starts_with(&format!("{name}{{")) && fragments.iter().all(|f| l.contains(f))
            })
            .collect();
        assert_eq!(
            found
                .iter()
                .map(|l| l.rsplit(' ').next().unwrap())
                .collect::<Vec<_>>(),
            [want.to_string()],
            "{what}: one series with {fragments:?} in\n{scraped}"
        );
    }
    assert!(scraped.contains("istio_build{component=\"proxy\",tag=\"binary-1.0\"} 1\n"));

    // 3. Envoy, on the same bootstrap and the same (accepted) configuration, less the
    //    filters only Istio's build of Envoy has (upstream Envoy cannot load them).
    let removed_for_envoy = without_istio_filters(&mut doc);
    assert!(removed_for_envoy > 0);
    for kind in &KINDS {
        let resources = doc[kind.key].as_array().unwrap().clone();
        xds.set(kind.type_url, encode(&pool, kind, &resources));
    }
    let argv = agent_argv(&envoy);
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let theirs = Sidecar::start(&pod, &argv, dir.path(), ("127.0.0.1:15000", "/server_info"));
    wait_ready("Envoy");
    let envoy_answers = traffic(&pod, &cluster, &mesh_client);
    let envoy_log = theirs.stop();

    let mut diff = Differences::default();
    for (case, answer) in &pilotfish_answers {
        diff.check(case, envoy_answers[case].clone(), answer.clone());
    }
    if !diff.is_empty() {
        eprintln!("pilotfish:\n{log}\nEnvoy:\n{envoy_log}");
    }
    diff.assert_none();
    // Not a vacuous agreement: each answer comes from the upstream it should.
    let want = [
        ("reviews by name", "reviews-v1 saw 10.244.0.10"),
        ("reviews for jason", "reviews-v2 saw 10.244.0.10"),
        ("details by FQDN", "details-v1 saw 10.244.0.10"),
        (
            "ratings by ClusterIP, retried on gRPC unavailable",
            "ratings-v1 saw 10.244.0.10",
        ),
        ("HTTP to a host outside the mesh", "outside saw 10.244.0.10"),
        ("mysqldb by ClusterIP (TCP)", "mysql banner to 10.244.0.10"),
        ("TCP outside the mesh", "echo hello from 10.244.0.10"),
        (
            "inbound HTTP on the service port",
            "productpage saw 127.0.0.6",
        ),
        ("inbound HTTP on another port", "app8000 saw 127.0.0.6"),
        ("inbound TCP on another port", "echo hello from 127.0.0.6"),
        (
            "inbound HTTP over mTLS from a mesh client",
            "HTTP/1.1 200 OK | productpage saw 127.0.0.6",
        ),
    ];
    for (case, answer) in want {
        assert_eq!(pilotfish_answers[case], answer, "{case}");
    }
}
