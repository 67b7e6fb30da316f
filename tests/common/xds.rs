//! An in-test ADS server (tonic): state of the world and delta over one resource store
//! that tests edit. Every request is recorded (ACK/NACK checks); every change is pushed
//! to every open stream. It can be stopped and restarted on the same address.
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use envoy_types::pb::{
    envoy::service::discovery::v3::{
        DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
        Resource,
        aggregated_discovery_service_server::{
            AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
        },
    },
    envoy::service::secret::v3::secret_discovery_service_server::{
        SecretDiscoveryService, SecretDiscoveryServiceServer,
    },
    google::protobuf::Any,
};
use futures_util::{Stream, StreamExt};
use prost::{Message, Name};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::{Request, Response, Status, Streaming};

pub const CDS: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
pub const EDS: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
pub const LDS: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
pub const RDS: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";

/// A request the server received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub delta: bool,
    pub type_url: String,
    pub version_info: String,
    pub nonce: String,
    pub names: Vec<String>,
    pub unsubscribe: Vec<String>,
    pub initial_versions: HashMap<String, String>,
    pub error: Option<String>,
    pub node_id: Option<String>,
    pub user_agent: Option<String>,
    /// When it arrived.
    pub at: Instant,
}

impl Seen {
    fn new(
        delta: bool,
        type_url: &str,
        nonce: &str,
        error: Option<&envoy_types::pb::google::rpc::Status>,
        node: Option<&envoy_types::pb::envoy::config::core::v3::Node>,
    ) -> Seen {
        Seen {
            delta,
            type_url: type_url.to_owned(),
            version_info: String::new(),
            nonce: nonce.to_owned(),
            names: Vec::new(),
            unsubscribe: Vec::new(),
            initial_versions: HashMap::new(),
            error: error.map(|e| e.message.clone()),
            node_id: node.map(|n| n.id.clone()),
            user_agent: node.map(|n| n.user_agent_name.clone()),
            at: Instant::now(),
        }
    }
}

#[derive(Default)]
struct Store {
    /// Per type: a version counter and the resources by name.
    types: HashMap<String, (u64, BTreeMap<String, Any>)>,
    seen: Vec<Seen>,
    /// Nonce → (type, version) of every SotW response sent.
    sent: HashMap<String, (String, String)>,
    nonce: u64,
}

#[derive(Clone)]
pub struct XdsServer {
    pub addr: SocketAddr,
    store: Arc<Mutex<Store>>,
    changed: Arc<watch::Sender<u64>>,
    task: Arc<Mutex<Option<tokio::task::JoinHandle<()>>>>,
}

/// A bootstrap whose listeners and clusters come over ADS (`api`: `GRPC` or
/// `DELTA_GRPC`) from the control plane at `xds` (an `Address` in YAML flow style).
/// Envoy takes it as it is.
pub fn ads_bootstrap(xds: &str, api: &str) -> String {
    format!(
        r#"node: {{ id: "sidecar~10.0.0.1~app.default~default.svc.cluster.local", cluster: app }}
admin: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }} }}
dynamic_resources:
  ads_config:
    api_type: {api}
    transport_api_version: V3
    grpc_services: [{{ envoy_grpc: {{ cluster_name: xds }} }}]
  cds_config: {{ ads: {{}}, resource_api_version: V3 }}
  lds_config: {{ ads: {{}}, resource_api_version: V3 }}
static_resources:
  clusters:
  - name: xds
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{ http2_protocol_options: {{}} }}
    load_assignment:
      cluster_name: xds
      endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {xds} }} }}] }}]
"#
    )
}

/// `addr` as an `Address` in YAML flow style.
pub fn tcp(addr: SocketAddr) -> String {
    format!(
        "{{ socket_address: {{ address: {}, port_value: {} }} }}",
        addr.ip(),
        addr.port()
    )
}

/// A `ClusterLoadAssignment` for `name` with `ups` as its endpoints (one locality).
pub fn cla(name: &str, ups: &[SocketAddr]) -> (String, Any) {
    let eps: Vec<String> = ups
        .iter()
        .map(|u| format!("{{ endpoint: {{ address: {} }} }}", tcp(*u)))
        .collect();
    let c: envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment =
        from_yaml(&format!(
            "cluster_name: {name}\nendpoints: [{{ lb_endpoints: [{}] }}]\n",
            eps.join(", ")
        ));
    (name.into(), any(&c))
}

/// An HTTP listener on 127.0.0.1 (`port` 0: any) whose routes come from RDS `route`.
pub fn listener(name: &str, port: u16, route: &str, server_name: &str) -> (String, Any) {
    let l: envoy_types::pb::envoy::config::listener::v3::Listener = from_yaml(&format!(
        r#"name: {name}
address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }}
filter_chains:
- filters:
  - name: envoy.filters.network.http_connection_manager
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
      stat_prefix: {name}
      server_name: {server_name}
      rds: {{ route_config_name: {route}, config_source: {{ ads: {{}}, resource_api_version: V3 }} }}
      http_filters: [{{ name: envoy.filters.http.router, typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }} }}]
"#
    ));
    (name.into(), any(&l))
}

/// Packs a message as an `Any`.
pub fn any<M: Message + Name>(m: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: m.encode_to_vec(),
    }
}

/// Builds an Envoy message from YAML (proto3 JSON), as a test writes resources.
pub fn from_yaml<M: Message + Name + Default>(yaml: &str) -> M {
    let v: serde_json::Value = serde_yaml::from_str(yaml).unwrap();
    let desc = pilotfish::config::proto::descriptor(&M::full_name()).unwrap();
    let msg = pilotfish::config::proto::from_json(desc, v).unwrap();
    M::decode(msg.encode_to_vec().as_slice()).unwrap()
}

fn version_of(a: &Any) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    a.value.hash(&mut h);
    format!("{:x}", h.finish())
}

impl XdsServer {
    pub async fn start() -> XdsServer {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let s = XdsServer {
            addr: l.local_addr().unwrap(),
            store: Arc::default(),
            changed: Arc::new(watch::channel(0).0),
            task: Arc::default(),
        };
        s.serve(l);
        s
    }

    /// A server on a Unix socket (as Istio's agent serves `./etc/istio/proxy/XDS`).
    pub async fn start_unix(path: &std::path::Path) -> XdsServer {
        let l = tokio::net::UnixListener::bind(path).unwrap();
        let s = XdsServer {
            addr: "0.0.0.0:0".parse().unwrap(),
            store: Arc::default(),
            changed: Arc::new(watch::channel(0).0),
            task: Arc::default(),
        };
        let svc = Svc {
            store: s.store.clone(),
            changed: s.changed.clone(),
        };
        let task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(AggregatedDiscoveryServiceServer::new(svc.clone()))
                .add_service(SecretDiscoveryServiceServer::new(svc))
                .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(l))
                .await;
        });
        *s.task.lock().unwrap() = Some(task);
        s
    }

    fn serve(&self, l: tokio::net::TcpListener) {
        let svc = Svc {
            store: self.store.clone(),
            changed: self.changed.clone(),
        };
        let task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(AggregatedDiscoveryServiceServer::new(svc))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(l))
                .await;
        });
        *self.task.lock().unwrap() = Some(task);
    }

    /// Kills the server and every open stream (a control-plane crash).
    pub fn stop(&self) {
        if let Some(t) = self.task.lock().unwrap().take() {
            t.abort();
        }
        // Streams are tasks of their own: make them end.
        self.changed.send_modify(|g| *g = u64::MAX);
    }

    /// Serves again on the same address with the same resources.
    pub async fn restart(&self) {
        self.changed.send_modify(|g| *g = 0);
        let l = loop {
            match tokio::net::TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        self.serve(l);
    }

    /// Replaces every resource of a type (one new version), pushing it to the streams.
    pub fn set(&self, type_url: &str, resources: Vec<(String, Any)>) {
        let mut s = self.store.lock().unwrap();
        let e = s.types.entry(type_url.to_owned()).or_default();
        e.0 += 1;
        e.1 = resources.into_iter().collect();
        drop(s);
        self.changed.send_modify(|g| *g += 1);
    }

    /// Adds or replaces one resource.
    pub fn put(&self, type_url: &str, name: &str, resource: Any) {
        let mut s = self.store.lock().unwrap();
        let e = s.types.entry(type_url.to_owned()).or_default();
        e.0 += 1;
        e.1.insert(name.to_owned(), resource);
        drop(s);
        self.changed.send_modify(|g| *g += 1);
    }

    pub fn remove(&self, type_url: &str, name: &str) {
        let mut s = self.store.lock().unwrap();
        let e = s.types.entry(type_url.to_owned()).or_default();
        e.0 += 1;
        e.1.remove(name);
        drop(s);
        self.changed.send_modify(|g| *g += 1);
    }

    /// The current SotW version of a type (`v<N>`).
    pub fn version(&self, type_url: &str) -> String {
        let s = self.store.lock().unwrap();
        format!("v{}", s.types.get(type_url).map_or(0, |e| e.0))
    }

    /// The delta version of one resource.
    pub fn resource_version(&self, type_url: &str, name: &str) -> Option<String> {
        let s = self.store.lock().unwrap();
        s.types.get(type_url)?.1.get(name).map(version_of)
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.store.lock().unwrap().seen.clone()
    }

    /// The latest request matching `pred` (searched in place, under the server's lock:
    /// requests can be large).
    pub fn find_request(&self, pred: impl Fn(&Seen) -> bool) -> Option<Seen> {
        let s = self.store.lock().unwrap();
        s.seen.iter().rev().find(|r| pred(r)).cloned()
    }

    /// Waits (bounded) for a request matching `pred`, returning it. `pred` runs under
    /// the server's lock: it must not call the server.
    pub async fn wait_request(&self, what: &str, pred: impl Fn(&Seen) -> bool) -> Seen {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(r) = self.find_request(&pred) {
                return r;
            }
            assert!(
                Instant::now() < deadline,
                "no request {what}; seen: {:#?}",
                self.requests()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits for the ACK of the current version of `type_url` (SotW).
    pub async fn wait_ack(&self, type_url: &str) -> Seen {
        let v = self.version(type_url);
        self.wait_request(&format!("ACKing {type_url} {v}"), |r| {
            r.type_url == type_url
                && r.version_info == v
                && r.error.is_none()
                && !r.nonce.is_empty()
        })
        .await
    }
}

#[derive(Clone)]
struct Svc {
    store: Arc<Mutex<Store>>,
    changed: Arc<watch::Sender<u64>>,
}

type Out<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

impl Svc {
    fn next_nonce(s: &mut Store) -> String {
        s.nonce += 1;
        format!("n{}", s.nonce)
    }
}

/// SDS as Istio's agent serves it next to xDS: state-of-the-world streams, served by
/// the same store (secrets under the `Secret` type URL).
#[tonic::async_trait]
impl SecretDiscoveryService for Svc {
    type DeltaSecretsStream = Out<DeltaDiscoveryResponse>;
    type StreamSecretsStream = Out<DiscoveryResponse>;

    async fn stream_secrets(
        &self,
        req: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamSecretsStream>, Status> {
        self.stream_aggregated_resources(req).await
    }

    async fn delta_secrets(
        &self,
        _: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaSecretsStream>, Status> {
        Err(Status::unimplemented("delta SDS"))
    }

    async fn fetch_secrets(
        &self,
        _: Request<DiscoveryRequest>,
    ) -> Result<Response<DiscoveryResponse>, Status> {
        Err(Status::unimplemented("fetch SDS"))
    }
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for Svc {
    type StreamAggregatedResourcesStream = Out<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = Out<DeltaDiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        req: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let mut inbound = req.into_inner();
        let (tx, rx) = mpsc::unbounded_channel();
        let store = self.store.clone();
        let mut changed = self.changed.subscribe();
        tokio::spawn(async move {
            // Per type: subscribed names (empty: wildcard) and the version last sent.
            let mut subs: HashMap<String, (Vec<String>, u64)> = HashMap::new();
            let push = |subs: &mut HashMap<String, (Vec<String>, u64)>, force: Option<&str>| {
                let mut s = store.lock().unwrap();
                let mut out = Vec::new();
                for (ty, (names, sent)) in subs.iter_mut() {
                    let (v, res) = s.types.get(ty).cloned().unwrap_or_default();
                    if v == *sent && force != Some(ty.as_str()) {
                        continue;
                    }
                    *sent = v;
                    let wanted: HashSet<&String> = names.iter().collect();
                    let resources = res
                        .iter()
                        .filter(|(n, _)| wanted.is_empty() || wanted.contains(n))
                        .map(|(_, a)| a.clone())
                        .collect();
                    out.push((ty.clone(), format!("v{v}"), resources));
                }
                for (ty, version, resources) in out {
                    let nonce = Svc::next_nonce(&mut s);
                    s.sent.insert(nonce.clone(), (ty.clone(), version.clone()));
                    let _ = tx.send(Ok(DiscoveryResponse {
                        version_info: version,
                        resources,
                        type_url: ty,
                        nonce,
                        ..Default::default()
                    }));
                }
            };
            loop {
                tokio::select! {
                    msg = inbound.next() => {
                        let Some(Ok(r)) = msg else { return };
                        store.lock().unwrap().seen.push(Seen {
                            version_info: r.version_info.clone(),
                            names: r.resource_names.clone(),
                            ..Seen::new(false, &r.type_url, &r.response_nonce, r.error_detail.as_ref(), r.node.as_ref())
                        });
                        let names_changed = subs.get(&r.type_url).is_none_or(|(n, _)| *n != r.resource_names);
                        let entry = subs.entry(r.type_url.clone()).or_insert((vec![], 0));
                        entry.0 = r.resource_names.clone();
                        if r.response_nonce.is_empty() || names_changed {
                            let ty = r.type_url.clone();
                            push(&mut subs, Some(&ty));
                        }
                    }
                    c = changed.changed() => {
                        if c.is_err() || *changed.borrow() == u64::MAX { return }
                        push(&mut subs, None);
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(UnboundedReceiverStream::new(rx))))
    }

    async fn delta_aggregated_resources(
        &self,
        req: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let mut inbound = req.into_inner();
        let (tx, rx) = mpsc::unbounded_channel();
        let store = self.store.clone();
        let mut changed = self.changed.subscribe();
        tokio::spawn(async move {
            // Per type: wildcard?, subscribed names, versions the client has.
            let mut subs: HashMap<String, (bool, HashSet<String>, HashMap<String, String>)> =
                HashMap::new();
            // `first`: a type just subscribed, answered even with nothing in it (as
            // istiod answers a new wildcard subscription) once the test has set it.
            let push =
                |subs: &mut HashMap<String, (bool, HashSet<String>, HashMap<String, String>)>,
                 first: Option<&str>| {
                    let mut s = store.lock().unwrap();
                    let mut out = Vec::new();
                    for (ty, (wild, names, has)) in subs.iter_mut() {
                        let res = s.types.get(ty).map(|e| e.1.clone()).unwrap_or_default();
                        let mut resources = Vec::new();
                        for (n, a) in &res {
                            if !*wild && !names.contains(n) {
                                continue;
                            }
                            let v = version_of(a);
                            if has.get(n) != Some(&v) {
                                has.insert(n.clone(), v.clone());
                                resources.push(Resource {
                                    name: n.clone(),
                                    version: v,
                                    resource: Some(a.clone()),
                                    ..Default::default()
                                });
                            }
                        }
                        let removed: Vec<String> = has
                            .keys()
                            .filter(|n| !res.contains_key(*n))
                            .cloned()
                            .collect();
                        for n in &removed {
                            has.remove(n);
                        }
                        let known = s.types.contains_key(ty);
                        if !resources.is_empty()
                            || !removed.is_empty()
                            || (known && first == Some(ty.as_str()))
                        {
                            out.push((ty.clone(), resources, removed));
                        }
                    }
                    for (ty, resources, removed) in out {
                        let nonce = Svc::next_nonce(&mut s);
                        let _ = tx.send(Ok(DeltaDiscoveryResponse {
                            system_version_info: format!("sys{}", s.nonce),
                            resources,
                            type_url: ty,
                            removed_resources: removed,
                            nonce,
                            ..Default::default()
                        }));
                    }
                };
            loop {
                tokio::select! {
                    msg = inbound.next() => {
                        let Some(Ok(r)) = msg else { return };
                        store.lock().unwrap().seen.push(Seen {
                            names: r.resource_names_subscribe.clone(),
                            unsubscribe: r.resource_names_unsubscribe.clone(),
                            initial_versions: r.initial_resource_versions.clone(),
                            ..Seen::new(true, &r.type_url, &r.response_nonce, r.error_detail.as_ref(), r.node.as_ref())
                        });
                        let first = !subs.contains_key(&r.type_url);
                        let e = subs.entry(r.type_url.clone()).or_insert_with(|| (false, HashSet::new(), HashMap::new()));
                        if first {
                            e.0 = r.resource_names_subscribe.is_empty() || r.resource_names_subscribe.iter().any(|n| n == "*");
                            e.2 = r.initial_resource_versions.clone();
                        }
                        for n in &r.resource_names_subscribe {
                            e.1.insert(n.clone());
                        }
                        for n in &r.resource_names_unsubscribe {
                            e.1.remove(n);
                            e.2.remove(n);
                        }
                        let ty = r.type_url.clone();
                        push(&mut subs, first.then_some(ty.as_str()));
                    }
                    c = changed.changed() => {
                        if c.is_err() || *changed.borrow() == u64::MAX { return }
                        push(&mut subs, None);
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(UnboundedReceiverStream::new(rx))))
    }
}
