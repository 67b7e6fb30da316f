//! pilotfish driven by an in-test ADS server (tests/common/xds.rs): initial load and
//! readiness, an update of every type, NACK with the last good config serving, SotW
//! removal, delta add/remove/reconnect with known versions, warming order, a
//! control-plane restart and 1,000 updates under traffic with no failed request,
//! path_config_source, ADS over a Unix socket, and Envoy's ACK/NACK behaviour compared
//! (including the listener updates it refuses).
mod common;

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use common::{
    Proxy, Upstream, http_get,
    load::Load,
    send,
    xds::{CDS, EDS, LDS, RDS, XdsServer, ads_bootstrap, any, cla, from_yaml, listener, tcp},
};
use envoy_types::pb::envoy::config::{
    cluster::v3::Cluster, listener::v3::Listener, route::v3::RouteConfiguration,
};
use http::Request;
use http_body_util::Full;

fn eds_cluster(name: &str) -> (String, envoy_types::pb::google::protobuf::Any) {
    let c: Cluster = from_yaml(&format!(
        "name: {name}\ntype: EDS\nconnect_timeout: 1s\neds_cluster_config: {{ service_name: {name}, eds_config: {{ ads: {{}}, resource_api_version: V3 }} }}\n"
    ));
    (name.into(), any(&c))
}

fn static_cluster(name: &str, up: SocketAddr) -> (String, envoy_types::pb::google::protobuf::Any) {
    let c: Cluster = from_yaml(&format!(
        "name: {name}\ntype: STATIC\nconnect_timeout: 1s\nload_assignment: {{ cluster_name: {name}, endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {} }} }}] }}] }}\n",
        tcp(up)
    ));
    (name.into(), any(&c))
}

/// A route configuration sending `/` to `cluster` (and `/c` to `c_cluster` if given),
/// marking responses with `x-route: tag`.
fn routes(
    name: &str,
    cluster: &str,
    tag: &str,
    c_cluster: Option<&str>,
) -> (String, envoy_types::pb::google::protobuf::Any) {
    let extra = c_cluster
        .map(|c| format!("  - match: {{ prefix: /c }}\n    route: {{ cluster: {c} }}\n"))
        .unwrap_or_default();
    let r: RouteConfiguration = from_yaml(&format!(
        r#"name: {name}
response_headers_to_add: [{{ header: {{ key: x-route, value: "{tag}" }} }}]
virtual_hosts:
- name: all
  domains: ["*"]
  routes:
{extra}  - match: {{ prefix: / }}
    route: {{ cluster: {cluster} }}
"#
    ));
    (name.into(), any(&r))
}

async fn get(addr: SocketAddr, path: &str) -> Result<(u16, http::HeaderMap), String> {
    let (status, headers, _) = send(
        addr,
        false,
        Request::get(path)
            .header("host", "test")
            .body(Full::default())
            .unwrap(),
    )
    .await?;
    Ok((status.as_u16(), headers))
}

fn header(h: &http::HeaderMap, name: &str) -> String {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned()
}

/// Waits (bounded) until a GET of `path` answers as `pred` wants.
async fn eventually(
    addr: impl Fn() -> SocketAddr,
    path: &str,
    what: &str,
    pred: impl Fn(u16, &http::HeaderMap) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = get(addr(), path).await;
        if let Ok((s, h)) = &got
            && pred(*s, h)
        {
            return;
        }
        assert!(Instant::now() < deadline, "never {what}; last: {got:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits (bounded) until `/ready` answers 200.
async fn wait_ready(p: &Proxy) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while http_get(p.admin, "/ready").await.unwrap().0 != 200 {
        assert!(Instant::now() < deadline, "never ready: {}", p.logs());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Loads the four types: cluster `a` (EDS → `up`), listener `http` → routes `r` → a.
fn load_basic(x: &XdsServer, up: SocketAddr) {
    x.set(CDS, vec![eds_cluster("a")]);
    x.set(EDS, vec![cla("a", &[up])]);
    x.set(LDS, vec![listener("http", 0, "r", "v1")]);
    x.set(RDS, vec![routes("r", "a", "1", None)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sotw_load_update_every_type_nack_and_removal() {
    let (up_a, up_b) = (Upstream::start("a").await, Upstream::start("b").await);
    let x = XdsServer::start().await;
    load_basic(&x, up_a.addr);
    let mut p = Proxy::start(&ads_bootstrap(&tcp(x.addr), "GRPC")).await;
    let addr = p.listener("http");

    // Initial load: routed through the dynamic listener, routes, cluster and endpoints.
    let (s, h) = get(addr, "/").await.unwrap();
    assert_eq!(
        (
            s,
            header(&h, "x-upstream").as_str(),
            header(&h, "x-route").as_str()
        ),
        (200, "a", "1")
    );
    assert_eq!(header(&h, "server"), "v1");
    for t in [CDS, EDS, LDS, RDS] {
        x.wait_ack(t).await;
    }
    let first = &x.requests()[0];
    assert_eq!(
        first.type_url, CDS,
        "clusters are requested first, as Envoy does"
    );
    assert_eq!(
        first.node_id.as_deref(),
        Some("sidecar~10.0.0.1~app.default~default.svc.cluster.local")
    );
    assert_eq!(first.user_agent.as_deref(), Some("pilotfish"));
    let eds_req = x.wait_request("for EDS", |r| r.type_url == EDS).await;
    assert_eq!(eds_req.names, ["a"]);
    let rds_req = x.wait_request("for RDS", |r| r.type_url == RDS).await;
    assert_eq!(rds_req.names, ["r"]);

    // A keep-alive connection opened now sees route updates on its next request.
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut kept, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = || {
        Request::get("/")
            .header("host", "test")
            .body(Full::<bytes::Bytes>::default())
            .unwrap()
    };
    assert_eq!(
        header(kept.send_request(req()).await.unwrap().headers(), "x-route"),
        "1"
    );

    // EDS update: the endpoints move to b.
    x.set(EDS, vec![cla("a", &[up_b.addr])]);
    eventually(
        || addr,
        "/",
        "routed to b",
        |s, h| s == 200 && header(h, "x-upstream") == "b",
    )
    .await;
    // RDS update: on the same connection.
    x.set(RDS, vec![routes("r", "a", "2", None)]);
    x.wait_ack(RDS).await;
    assert_eq!(
        header(kept.send_request(req()).await.unwrap().headers(), "x-route"),
        "2"
    );
    // CDS update: a new cluster, and a route to it.
    x.set(CDS, vec![eds_cluster("a"), static_cluster("c", up_a.addr)]);
    x.wait_ack(CDS).await;
    x.set(RDS, vec![routes("r", "a", "3", Some("c"))]);
    eventually(
        || addr,
        "/c",
        "routed to c",
        |s, h| s == 200 && header(h, "x-upstream") == "a" && header(h, "x-route") == "3",
    )
    .await;
    // LDS update: new connections get the new listener; the kept one still works.
    x.set(LDS, vec![listener("http", 0, "r", "v2")]);
    x.wait_ack(LDS).await;
    p.refresh_listeners().await;
    assert_eq!(
        p.listener("http"),
        addr,
        "an updated listener keeps its socket"
    );
    eventually(
        || addr,
        "/",
        "served by the new listener",
        |s, h| s == 200 && header(h, "server") == "v2",
    )
    .await;
    let old = kept.send_request(req()).await.unwrap();
    assert_eq!(old.status(), 200);
    assert_eq!(
        header(old.headers(), "connection"),
        "close",
        "the old listener drains"
    );

    // NACK: an invalid listener rejects the whole response (as Envoy's validation does).
    let lds_before = x.version(LDS);
    let mut bad: Listener = from_yaml::<Listener>(
        "name: http\naddress: { socket_address: { address: 127.0.0.1, port_value: 0 } }\nfilter_chains: [{ filters: [] }]\n",
    );
    bad.tcp_backlog_size = Some(envoy_types::pb::google::protobuf::UInt32Value { value: 10 });
    x.set(
        LDS,
        vec![("http".into(), any(&bad)), listener("other", 0, "r", "o")],
    );
    let nack = x
        .wait_request("NACKing the bad listener", |r| {
            r.type_url == LDS && r.error.is_some()
        })
        .await;
    let detail = nack.error.clone().unwrap();
    assert!(
        detail.contains("listener 'http': tcp_backlog_size: not supported"),
        "{detail}"
    );
    assert_eq!(
        nack.version_info, lds_before,
        "a NACK keeps the last good version"
    );
    eventually(
        || addr,
        "/",
        "still served by the last good listener",
        |s, h| s == 200 && header(h, "server") == "v2",
    )
    .await;
    p.refresh_listeners().await;
    assert!(
        !p.listeners.contains_key("other"),
        "nothing of a rejected response applies"
    );
    assert_eq!(
        p.metric("envoy_listener_manager_lds_update_rejected").await,
        Some(1)
    );
    let dump = p.admin_get("/config_dump").await.1;
    let dump: serde_json::Value = serde_json::from_str(&dump).unwrap();
    let ls = dump["configs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["@type"] == "type.googleapis.com/envoy.admin.v3.ListenersConfigDump")
        .unwrap();
    let http_l = ls["dynamic_listeners"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == "http")
        .unwrap();
    assert!(
        http_l["active_state"]["listener"]["name"] == "http",
        "{http_l}"
    );
    assert!(
        http_l["error_state"]["details"]
            .as_str()
            .unwrap()
            .contains("tcp_backlog_size")
    );
    assert_eq!(ls["version_info"], lds_before);

    // config_dump: the dynamic sections in Envoy's shape.
    let cs = dump["configs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["@type"] == "type.googleapis.com/envoy.admin.v3.ClustersConfigDump")
        .unwrap();
    let names: Vec<&str> = cs["dynamic_active_clusters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["cluster"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a", "c"]);
    assert!(cs["dynamic_active_clusters"][0]["last_updated"].is_string());
    assert_eq!(cs["version_info"], x.version(CDS));
    let rs = dump["configs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["@type"] == "type.googleapis.com/envoy.admin.v3.RoutesConfigDump")
        .unwrap();
    assert_eq!(rs["dynamic_route_configs"][0]["route_config"]["name"], "r");
    assert_eq!(
        rs["dynamic_route_configs"][0]["version_info"],
        x.version(RDS)
    );
    let with_eds = p.admin_get("/config_dump?include_eds").await.1;
    assert!(
        with_eds.contains("EndpointsConfigDump") && with_eds.contains("dynamic_endpoint_configs")
    );

    // SotW removal: a cluster absent from CDS is gone (NC), a listener absent from LDS closes.
    x.set(CDS, vec![eds_cluster("a")]);
    eventually(|| addr, "/c", "no cluster c", |s, _| s == 503).await;
    x.set(LDS, vec![listener("other", 0, "r", "o")]);
    x.wait_ack(LDS).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while tokio::net::TcpStream::connect(addr).await.is_ok() {
        assert!(Instant::now() < deadline, "removed listener still accepts");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Stats with Envoy's names.
    assert_eq!(
        p.metric("envoy_control_plane_connected_state").await,
        Some(1)
    );
    assert!(
        p.metric("envoy_cluster_manager_cds_update_success")
            .await
            .unwrap()
            >= 3
    );
    assert!(
        p.metric("envoy_listener_manager_lds_update_success")
            .await
            .unwrap()
            >= 3
    );
    assert!(
        p.metric("envoy_cluster_update_success{envoy_cluster_name=\"a\"}")
            .await
            .unwrap()
            >= 2
    );
    assert!(p.metric("envoy_http_rds_update_success{envoy_http_conn_manager_prefix=\"http\",envoy_rds_route_config=\"r\"}").await.unwrap() >= 3);
    assert!(
        p.metric("envoy_cluster_manager_cds_update_duration_count")
            .await
            .unwrap()
            >= 3
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warming_clusters_then_listeners_then_ready() {
    let up = Upstream::start("a").await;
    let x = XdsServer::start().await;
    x.set(CDS, vec![eds_cluster("a")]);
    x.set(LDS, vec![listener("http", 0, "r", "v1")]);
    let mut p = Proxy::start_unready(common::BIN, &ads_bootstrap(&tcp(x.addr), "GRPC"), &[]).await;

    // The cluster waits for its endpoints; LDS is not even asked for yet (Envoy's order).
    x.wait_request("for EDS a", |r| r.type_url == EDS && r.names == ["a"])
        .await;
    let dump = p.admin_get("/config_dump").await.1;
    assert!(dump.contains("dynamic_warming_clusters"), "{dump}");
    assert!(!x.requests().iter().any(|r| r.type_url == LDS));
    assert_eq!(http_get(p.admin, "/ready").await.unwrap().0, 503);

    // Endpoints arrive: the cluster is warm, LDS is requested, the listener waits for RDS.
    x.set(EDS, vec![cla("a", &[up.addr])]);
    x.wait_request("for RDS r", |r| r.type_url == RDS && r.names == ["r"])
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    p.refresh_listeners().await;
    assert!(
        !p.listeners.contains_key("http"),
        "a listener without its routes takes no traffic"
    );
    let dump = p.admin_get("/config_dump").await.1;
    assert!(dump.contains("warming_state"), "{dump}");
    assert_eq!(http_get(p.admin, "/ready").await.unwrap().0, 503);
    assert_eq!(
        p.metric("envoy_listener_manager_total_listeners_warming")
            .await,
        Some(1)
    );

    // Routes arrive: the listener binds and the process is ready.
    x.set(RDS, vec![routes("r", "a", "1", None)]);
    wait_ready(&p).await;
    p.refresh_listeners().await;
    let (s, h) = get(p.listener("http"), "/").await.unwrap();
    assert_eq!((s, header(&h, "x-upstream").as_str()), (200, "a"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initial_fetch_timeout_makes_ready_without_a_control_plane() {
    // Nothing listens on the xDS address: ready after initial_fetch_timeout (1 s here)
    // for CDS, then LDS; the static config serves meanwhile.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let yaml = ads_bootstrap(&tcp(closed), "GRPC")
        .replace(
            "cds_config: { ads: {}, resource_api_version: V3 }",
            "cds_config: { ads: {}, resource_api_version: V3, initial_fetch_timeout: 1s }",
        )
        .replace(
            "lds_config: { ads: {}, resource_api_version: V3 }",
            "lds_config: { ads: {}, resource_api_version: V3, initial_fetch_timeout: 1s }",
        );
    let p = Proxy::start_unready(common::BIN, &yaml, &[]).await;
    wait_ready(&p).await;
    assert_eq!(
        p.metric("envoy_control_plane_connected_state").await,
        Some(0)
    );
    assert!(
        p.metric("envoy_cluster_manager_cds_update_failure")
            .await
            .unwrap()
            >= 1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_add_remove_and_reconnect_with_known_versions_under_traffic() {
    let up = Upstream::start("a").await;
    let x = XdsServer::start().await;
    load_basic(&x, up.addr);
    let p = Proxy::start(&ads_bootstrap(&tcp(x.addr), "DELTA_GRPC")).await;
    let addr = p.listener("http");
    let first = x
        .wait_request("delta CDS", |r| r.delta && r.type_url == CDS)
        .await;
    assert!(first.initial_versions.is_empty());
    let load = Load::start(addr, 4);

    // Add, then remove, a cluster and its route.
    x.put(CDS, "c", static_cluster("c", up.addr).1);
    x.put(RDS, "r", routes("r", "a", "2", Some("c")).1);
    eventually(
        || addr,
        "/c",
        "routed to c",
        |s, h| s == 200 && header(h, "x-route") == "2",
    )
    .await;
    x.remove(CDS, "c");
    eventually(|| addr, "/c", "c removed", |s, _| s == 503).await;
    // Its stats go with it (a second after the updates quiet down), as Envoy frees a
    // removed cluster's stats; the others stay.
    let deadline = Instant::now() + Duration::from_secs(10);
    while p.admin_get("/stats").await.1.contains("cluster.c.") {
        assert!(Instant::now() < deadline, "cluster c's stats stayed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The same release drops the decoded descriptor pool (over 10 MB): between pushes,
    // xDS checks need only the allow-list schema.
    let memory: serde_json::Value = serde_json::from_str(&p.admin_get("/memory").await.1).unwrap();
    let allocated: u64 = memory["allocated"].as_str().unwrap().parse().unwrap();
    assert!(
        allocated < 6 << 20,
        "{allocated} bytes in use after the pushes settled: the descriptor pool stayed"
    );
    assert!(
        p.admin_get("/stats")
            .await
            .1
            .contains("cluster.a.upstream_rq_total")
    );
    let acks = x
        .requests()
        .iter()
        .filter(|r| r.delta && !r.nonce.is_empty() && r.error.is_none())
        .count();
    assert!(acks >= 5, "every delta response is ACKed");

    // The control plane goes away: traffic carries on; it comes back: the new stream
    // tells it the versions already held, so nothing is resent.
    x.stop();
    let deadline = Instant::now() + Duration::from_secs(10);
    while p.metric("envoy_control_plane_connected_state").await != Some(0) {
        assert!(
            Instant::now() < deadline,
            "never noticed the control plane left"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = x.requests().len();
    x.restart().await;
    let again = x
        .wait_request("a new delta CDS stream", |r| {
            r.delta && r.type_url == CDS && r.nonce.is_empty() && !r.initial_versions.is_empty()
        })
        .await;
    assert!(x.requests().len() > before);
    assert_eq!(
        again.initial_versions.get("a"),
        x.resource_version(CDS, "a").as_ref()
    );
    assert!(!again.initial_versions.contains_key("c"));
    let rds_again = x
        .wait_request("a new delta RDS stream", |r| {
            r.delta && r.type_url == RDS && !r.initial_versions.is_empty()
        })
        .await;
    assert_eq!(
        rds_again.initial_versions.get("r"),
        x.resource_version(RDS, "r").as_ref()
    );
    assert_eq!(rds_again.names, ["r"]);
    p.wait_metric("envoy_control_plane_connected_state", 1)
        .await;
    // Still managed after the reconnect.
    x.put(RDS, "r", routes("r", "a", "3", None).1);
    eventually(
        || addr,
        "/",
        "route 3",
        |s, h| s == 200 && header(h, "x-route") == "3",
    )
    .await;
    let (ok, failed) = load.finish().await;
    assert!(
        failed.is_empty(),
        "{} failed of {}: {:?}",
        failed.len(),
        ok,
        &failed[..failed.len().min(5)]
    );
    assert!(ok > 100, "only {ok} requests");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_updates_and_a_restart_under_load_fail_no_request() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let x = XdsServer::start().await;
    x.set(
        CDS,
        vec![static_cluster("a", a.addr), static_cluster("b", b.addr)],
    );
    x.set(LDS, vec![listener("http", 0, "r", "v1")]);
    x.set(RDS, vec![routes("r", "a", "0", None)]);
    let p = Proxy::start(&ads_bootstrap(&tcp(x.addr), "GRPC")).await;
    let addr = p.listener("http");
    let load = Load::start(addr, 4);
    for i in 1..=1000 {
        let cluster = if i % 2 == 0 { "a" } else { "b" };
        x.set(RDS, vec![routes("r", cluster, &i.to_string(), None)]);
        if i % 50 == 0 {
            // Endpoints and clusters change too.
            x.set(
                CDS,
                vec![
                    static_cluster("a", a.addr),
                    static_cluster("b", b.addr),
                    static_cluster(&format!("extra{i}"), a.addr),
                ],
            );
        }
        tokio::task::yield_now().await;
    }
    x.wait_ack(RDS).await;
    eventually(
        || addr,
        "/",
        "the last route",
        |s, h| s == 200 && header(h, "x-route") == "1000",
    )
    .await;
    // A control-plane restart.
    x.stop();
    tokio::time::sleep(Duration::from_millis(500)).await;
    x.restart().await;
    let v = x.version(RDS);
    x.wait_request("the same RDS version after the restart", |r| {
        r.type_url == RDS && r.version_info == v && r.nonce.is_empty()
    })
    .await;
    x.wait_ack(CDS).await;
    let (ok, failed) = load.finish().await;
    assert!(
        failed.is_empty(),
        "{} failed of {}: {:?}",
        failed.len(),
        ok,
        &failed[..failed.len().min(5)]
    );
    assert!(a.requests().len() + b.requests().len() >= ok as usize);
    assert!(p.metric("envoy_http_rds_update_success{envoy_http_conn_manager_prefix=\"http\",envoy_rds_route_config=\"r\"}").await.unwrap() >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_config_source_loads_and_reloads() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let dir = tempfile::tempdir().unwrap();
    let lds = dir.path().join("lds.yaml");
    let cds = dir.path().join("cds.yaml");
    let cds_file = |up: SocketAddr| {
        format!(
            "version_info: \"1\"\nresources:\n- \"@type\": type.googleapis.com/envoy.config.cluster.v3.Cluster\n  name: backend\n  type: STATIC\n  load_assignment: {{ cluster_name: backend, endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {} }} }}] }}] }}\n",
            tcp(up)
        )
    };
    std::fs::write(&cds, cds_file(a.addr)).unwrap();
    std::fs::write(
        &lds,
        r#"version_info: "1"
resources:
- "@type": type.googleapis.com/envoy.config.listener.v3.Listener
  name: http
  address: { socket_address: { address: 127.0.0.1, port_value: 0 } }
  filter_chains:
  - filters:
    - name: envoy.filters.network.tcp_proxy
      typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: t, cluster: backend }
"#,
    )
    .unwrap();
    let yaml = format!(
        "node: {{ id: n, cluster: c }}\nadmin: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }} }}\ndynamic_resources:\n  lds_config: {{ path_config_source: {{ path: {} }}, resource_api_version: V3 }}\n  cds_config: {{ path_config_source: {{ path: {} }}, resource_api_version: V3 }}\n",
        lds.display(),
        cds.display()
    );
    let p = Proxy::start(&yaml).await;
    let addr = p.listener("http");
    let (s, h) = get(addr, "/").await.unwrap();
    assert_eq!((s, header(&h, "x-upstream").as_str()), (200, "a"));
    // Replace the CDS file atomically: the cluster moves to b.
    let tmp = dir.path().join("cds.tmp");
    std::fs::write(&tmp, cds_file(b.addr).replace("\"1\"", "\"2\"")).unwrap();
    std::fs::rename(&tmp, &cds).unwrap();
    eventually(
        || addr,
        "/",
        "routed to b",
        |s, h| s == 200 && header(h, "x-upstream") == "b",
    )
    .await;
    // A broken file is rejected and the running config kept.
    std::fs::write(&tmp, "resources: [ { \"@type\": type.googleapis.com/envoy.config.cluster.v3.Cluster, name: backend, type: STATIC, close_connections_on_host_health_failure: true } ]\n").unwrap();
    std::fs::rename(&tmp, &cds).unwrap();
    p.wait_metric("envoy_cluster_manager_cds_update_rejected", 1)
        .await;
    let (s, h) = get(addr, "/").await.unwrap();
    assert_eq!((s, header(&h, "x-upstream").as_str()), (200, "b"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ads_over_a_unix_socket() {
    let up = Upstream::start("a").await;
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("XDS");
    let x = XdsServer::start_unix(&sock).await;
    load_basic(&x, up.addr);
    let p = Proxy::start(&ads_bootstrap(
        &format!("{{ pipe: {{ path: {} }} }}", sock.display()),
        "GRPC",
    ))
    .await;
    let (s, h) = get(p.listener("http"), "/").await.unwrap();
    assert_eq!((s, header(&h, "x-upstream").as_str()), (200, "a"));
}

/// Envoy and pilotfish on the same server and the same pushes. A response with an
/// invalid listener is NACKed with the previous version and nothing of it applies; a
/// response whose listener cannot bind its port is NACKed too, but its other listeners
/// apply. The rejected-update counters agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_and_nack_match_envoy() {
    let Some(envoy) = common::reference_envoy() else {
        return;
    };
    let up = Upstream::start("a").await;
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_port = busy.local_addr().unwrap().port();
    for (bin, api) in [
        (envoy.as_str(), "GRPC"),
        (common::BIN, "GRPC"),
        (envoy.as_str(), "DELTA_GRPC"),
        (common::BIN, "DELTA_GRPC"),
    ] {
        let x = XdsServer::start().await;
        load_basic(&x, up.addr);
        let mut p = Proxy::start_bin(bin, &ads_bootstrap(&tcp(x.addr), api), &[]).await;
        let (s, _) = get(p.listener("http"), "/").await.unwrap();
        assert_eq!(s, 200, "{bin} {api}");
        let lds_before = x.version(LDS);
        // Port 70000 is invalid.
        let bad = listener("bad", 0, "r", "x").1;
        let mut bad: Listener = prost::Message::decode(bad.value.as_slice()).unwrap();
        bad.address = Some(from_yaml(
            "socket_address: { address: 127.0.0.1, port_value: 70000 }",
        ));
        x.set(
            LDS,
            vec![
                listener("http", 0, "r", "v1"),
                ("bad".into(), any(&bad)),
                listener("good", 0, "r", "g"),
            ],
        );
        let nack = x
            .wait_request(&format!("{bin} {api} NACK"), |r| {
                r.type_url == LDS && r.error.is_some()
            })
            .await;
        if api == "GRPC" {
            assert_eq!(
                nack.version_info, lds_before,
                "{bin}: a NACK carries the last good version"
            );
        }
        assert!(
            nack.error.as_deref().unwrap().contains("70000"),
            "{bin}: {:?}",
            nack.error
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        p.refresh_listeners().await;
        assert!(
            !p.listeners.contains_key("good"),
            "{bin} {api}: applied part of an invalid response"
        );
        let (s, _) = get(p.listener("http"), "/").await.unwrap();
        assert_eq!(s, 200, "{bin} {api}: the last good listener keeps serving");

        // A listener that cannot bind: NACKed, the others of the response apply.
        // (A new name: a delta server does not resend what it sent before.)
        x.set(
            LDS,
            vec![
                listener("http", 0, "r", "v1"),
                listener("busy", busy_port, "r", "b"),
                listener("good2", 0, "r", "g"),
            ],
        );
        x.wait_request(&format!("{bin} {api} second NACK"), |r| {
            r.type_url == LDS && r.error.is_some() && r.nonce != nack.nonce
        })
        .await;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            p.refresh_listeners().await;
            if p.listeners.contains_key("good2") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{bin} {api}: the valid listener was not applied"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(!p.listeners.contains_key("busy"));
        let rejected = p.metric("envoy_listener_manager_lds_update_rejected").await;
        assert_eq!(rejected, Some(2), "{bin} {api}");
    }
    drop(busy);
}

/// With SO_REUSEPORT the kernel would take a second bind of an address, so what Envoy
/// refuses is refused explicitly, compared with Envoy: a listener on an address another
/// listener has, and an update that changes `enable_reuse_port`, are NACKed while the
/// listener there keeps serving, as it does when its new address cannot be bound; a
/// response that removes a listener and gives its address to a new one applies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_addresses_and_reuse_port_changes_are_refused_like_envoy() {
    let Some(envoy) = common::reference_envoy() else {
        return;
    };
    let up = Upstream::start("a").await;
    for bin in [envoy.as_str(), common::BIN] {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let x = XdsServer::start().await;
        load_basic(&x, up.addr);
        x.set(LDS, vec![listener("http", port, "r", "v1")]);
        let mut p = Proxy::start_bin(bin, &ads_bootstrap(&tcp(x.addr), "GRPC"), &[]).await;
        let addr = p.listener("http");
        assert_eq!(addr.port(), port);
        assert_eq!(get(addr, "/").await.unwrap().0, 200, "{bin}");

        // The next LDS NACK's error (one more than seen so far).
        let mut seen = 0;
        let mut nacked = async |what: &str, x: &XdsServer| {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let nacks: Vec<String> = x
                    .requests()
                    .into_iter()
                    .filter(|r| r.type_url == LDS)
                    .filter_map(|r| r.error)
                    .collect();
                if nacks.len() > seen {
                    seen = nacks.len();
                    return nacks.last().unwrap().clone();
                }
                assert!(Instant::now() < deadline, "{bin}: no NACK of {what}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        x.set(
            LDS,
            vec![
                listener("http", port, "r", "v1"),
                listener("dup", port, "r", "dup"),
            ],
        );
        let e = nacked("a duplicate address", &x).await;
        assert!(e.contains("dup"), "{bin}: {e}");

        let mut off: Listener =
            prost::Message::decode(listener("http", port, "r", "v1").1.value.as_slice()).unwrap();
        off.enable_reuse_port = Some(envoy_types::pb::google::protobuf::BoolValue { value: false });
        x.set(LDS, vec![("http".into(), any(&off))]);
        let e = nacked("an enable_reuse_port change", &x).await;
        assert!(
            e.contains("reuse port") || e.contains("reuse_port"),
            "{bin}: {e}"
        );
        p.refresh_listeners().await;
        assert!(!p.listeners.contains_key("dup"), "{bin}");
        let (status, headers) = get(addr, "/").await.unwrap();
        assert_eq!(
            (status, header(&headers, "server")),
            (200, "v1".into()),
            "{bin}"
        );

        // A new address that cannot be bound: NACKed, the listener keeps its old one.
        let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let busy_port = busy.local_addr().unwrap().port();
        x.set(LDS, vec![listener("http", busy_port, "r", "v2")]);
        nacked("an address in use", &x).await;
        let (status, headers) = get(addr, "/").await.unwrap();
        assert_eq!(
            (status, header(&headers, "server")),
            (200, "v1".into()),
            "{bin}"
        );
        drop(busy);

        // The address passes from a removed listener to a new one in one response.
        x.set(LDS, vec![listener("next", port, "r", "next")]);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let served = get(addr, "/")
                .await
                .ok()
                .map(|(s, h)| (s, header(&h, "server")));
            if served == Some((200, "next".into())) {
                break;
            }
            assert!(Instant::now() < deadline, "{bin}: {served:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        p.refresh_listeners().await;
        assert!(!p.listeners.contains_key("http"), "{bin}");
    }
}
