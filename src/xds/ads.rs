//! The ADS client: one gRPC stream (`StreamAggregatedResources` or
//! `DeltaAggregatedResources`) to the cluster `ads_config` names, over TCP or a Unix
//! socket. Requests follow the state's subscriptions (CDS first, then EDS, LDS, RDS);
//! each response is applied and ACKed, or NACKed with the reason while the last good
//! config keeps serving. A lost stream is retried with jittered exponential backoff;
//! the data plane is untouched while the control plane is away.
use std::{
    collections::{BTreeSet, HashMap},
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use envoy_types::pb::{
    envoy::{
        config::core::v3::Node,
        service::discovery::v3::{
            DeltaDiscoveryRequest, DiscoveryRequest,
            aggregated_discovery_service_client::AggregatedDiscoveryServiceClient,
        },
    },
    google::rpc::Status,
};
use hyper_util::rt::TokioIo;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::transport::{Channel, Endpoint, Uri};

use super::{
    Kind,
    state::{Handle, Update, Wanted},
};
use crate::config::AdsConfig;

/// Where the control plane is.
#[derive(Debug, Clone)]
pub enum Target {
    Tcp(std::net::SocketAddr),
    Unix(PathBuf),
}

/// gRPC status code INVALID_ARGUMENT, which Envoy puts in a NACK's `error_detail`.
const INVALID_ARGUMENT: i32 = 3;

/// Envoy's ADS backoff: 500 ms doubling to 30 s, with full jitter.
const BACKOFF_BASE: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Runs the ADS client until the process exits.
pub async fn run(
    cfg: AdsConfig,
    target: Target,
    connect_timeout: Duration,
    node: Node,
    state: Arc<Handle>,
) {
    let mut failures = 0u32;
    loop {
        let outcome = match connect(&target, connect_timeout).await {
            Ok(channel) => {
                let got = if cfg.delta {
                    delta(channel, &cfg, &node, &state).await
                } else {
                    sotw(channel, &cfg, &node, &state).await
                };
                if got.responses > 0 {
                    failures = 0;
                }
                got.error
            }
            Err(e) => e,
        };
        state.set_connected(false);
        state.failed();
        failures = failures.saturating_add(1);
        let ceiling = BACKOFF_BASE
            .saturating_mul(1 << failures.min(10))
            .min(BACKOFF_MAX);
        let wait = ceiling
            .mul_f64(fastrand::f64())
            .max(Duration::from_millis(50));
        tracing::warn!(
            "xDS stream to {target:?} ended ({outcome}); retrying in {:?}",
            wait
        );
        tokio::time::sleep(wait).await;
    }
}

async fn connect(target: &Target, timeout: Duration) -> Result<Channel, String> {
    let fail = |e: tonic::transport::Error| format!("connect: {e}");
    match target {
        Target::Tcp(addr) => Endpoint::from_shared(format!("http://{addr}"))
            .map_err(fail)?
            .connect_timeout(timeout)
            .tcp_nodelay(true)
            .connect()
            .await
            .map_err(fail),
        Target::Unix(path) => {
            let path = path.clone();
            Endpoint::from_static("http://localhost")
                .connect_timeout(timeout)
                .connect_with_connector(tower_service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move {
                        let s = tokio::net::UnixStream::connect(path).await?;
                        Ok::<_, std::io::Error>(TokioIo::new(s))
                    }
                }))
                .await
                .map_err(fail)
        }
    }
}

/// `tower::service_fn` without depending on tower directly.
fn tower_service_fn<F>(f: F) -> ServiceFn<F> {
    ServiceFn(f)
}

#[derive(Clone)]
struct ServiceFn<F>(F);

impl<F, Fut, R> tower_service::Service<Uri> for ServiceFn<F>
where
    F: FnMut(Uri) -> Fut,
    Fut: std::future::Future<Output = Result<R, std::io::Error>>,
{
    type Response = R;
    type Error = std::io::Error;
    type Future = Fut;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Fut {
        (self.0)(uri)
    }
}

/// How a stream ended.
struct Ended {
    responses: u64,
    error: String,
}

fn names(w: &Wanted) -> Vec<String> {
    match w {
        Wanted::Wildcard => Vec::new(),
        Wanted::Names(n) => n.iter().cloned().collect(),
    }
}

/// State of the world: one `DiscoveryRequest` per type when its subscription changes,
/// and one per response (ACK or NACK).
async fn sotw(channel: Channel, cfg: &AdsConfig, node: &Node, state: &Handle) -> Ended {
    let (tx, rx) = mpsc::unbounded_channel::<DiscoveryRequest>();
    let mut node_sent = false;
    let mut with_node = |mut r: DiscoveryRequest| {
        if !cfg.node_on_first_message_only || !node_sent {
            r.node = Some(node.clone());
            node_sent = true;
        }
        r
    };
    let mut sent: HashMap<Kind, Wanted> = HashMap::new();
    let mut nonces: HashMap<Kind, String> = HashMap::new();
    let mut changed = state.subscribe();
    let mut client = AggregatedDiscoveryServiceClient::new(channel)
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX);
    // Requests go out as subscriptions change; the first ones before the stream opens.
    let send_changes =
        |sent: &mut HashMap<Kind, Wanted>,
         nonces: &HashMap<Kind, String>,
         with_node: &mut dyn FnMut(DiscoveryRequest) -> DiscoveryRequest| {
            for kind in Kind::ALL {
                let Some(want) = state.wanted(kind) else {
                    continue;
                };
                let before = sent.get(&kind);
                if before == Some(&want) {
                    continue;
                }
                // Never open a named subscription with no names: that would be a wildcard.
                if before.is_none() && want == Wanted::Names(BTreeSet::new()) {
                    continue;
                }
                let _ = tx.send(with_node(DiscoveryRequest {
                    version_info: state.version(kind),
                    resource_names: names(&want),
                    type_url: kind.type_url(),
                    response_nonce: nonces.get(&kind).cloned().unwrap_or_default(),
                    ..Default::default()
                }));
                sent.insert(kind, want);
            }
        };
    send_changes(&mut sent, &nonces, &mut with_node);
    let mut inbound = match client
        .stream_aggregated_resources(UnboundedReceiverStream::new(rx))
        .await
    {
        Ok(r) => r.into_inner(),
        Err(e) => {
            return Ended {
                responses: 0,
                error: e.to_string(),
            };
        }
    };
    state.set_connected(true);
    let mut responses = 0;
    loop {
        tokio::select! {
            msg = inbound.message() => {
                let resp = match msg {
                    Ok(Some(r)) => r,
                    Ok(None) => return Ended { responses, error: "closed by the server".into() },
                    Err(e) => return Ended { responses, error: e.to_string() },
                };
                responses += 1;
                let received = Instant::now();
                let Some(kind) = Kind::from_type_url(&resp.type_url) else {
                    tracing::warn!("xDS: ignoring a response of unknown type {}", resp.type_url);
                    continue;
                };
                let update = Update::Full { version: resp.version_info.clone(), resources: resp.resources };
                let result = state.apply(kind, update, received);
                nonces.insert(kind, resp.nonce.clone());
                let want = state.wanted(kind).unwrap_or(Wanted::Names(BTreeSet::new()));
                let error_detail = match &result {
                    Ok(()) => None,
                    Err(e) => {
                        tracing::warn!("xDS: rejected {} version {}: {e}", kind.short(), resp.version_info);
                        Some(Status { code: INVALID_ARGUMENT, message: e.clone(), details: vec![] })
                    }
                };
                let _ = tx.send(with_node(DiscoveryRequest {
                    version_info: state.version(kind),
                    resource_names: names(&want),
                    type_url: kind.type_url(),
                    response_nonce: resp.nonce,
                    error_detail,
                    ..Default::default()
                }));
                sent.insert(kind, want);
                send_changes(&mut sent, &nonces, &mut with_node);
            }
            Ok(()) = changed.changed() => send_changes(&mut sent, &nonces, &mut with_node),
        }
    }
}

/// Delta: the first request of each type carries the versions already held (so the
/// server sends only what changed), later ones subscribe and unsubscribe names.
async fn delta(channel: Channel, cfg: &AdsConfig, node: &Node, state: &Handle) -> Ended {
    let (tx, rx) = mpsc::unbounded_channel::<DeltaDiscoveryRequest>();
    let mut node_sent = false;
    let mut with_node = |mut r: DeltaDiscoveryRequest| {
        // Envoy sends the node on a delta stream's first request only.
        let _ = cfg;
        if !node_sent {
            r.node = Some(node.clone());
            node_sent = true;
        }
        r
    };
    let mut sent: HashMap<Kind, Wanted> = HashMap::new();
    let mut changed = state.subscribe();
    let send_changes =
        |sent: &mut HashMap<Kind, Wanted>,
         with_node: &mut dyn FnMut(DeltaDiscoveryRequest) -> DeltaDiscoveryRequest| {
            for kind in Kind::ALL {
                let Some(want) = state.wanted(kind) else {
                    continue;
                };
                let req = match (sent.get(&kind), &want) {
                    (Some(before), _) if *before == want => continue,
                    (None, Wanted::Names(n)) if n.is_empty() => continue,
                    (None, w) => DeltaDiscoveryRequest {
                        type_url: kind.type_url(),
                        resource_names_subscribe: names(w),
                        initial_resource_versions: state.known_versions(kind),
                        ..Default::default()
                    },
                    (Some(Wanted::Names(before)), Wanted::Names(now)) => DeltaDiscoveryRequest {
                        type_url: kind.type_url(),
                        resource_names_subscribe: now.difference(before).cloned().collect(),
                        resource_names_unsubscribe: before.difference(now).cloned().collect(),
                        ..Default::default()
                    },
                    // A wildcard type never changes its subscription.
                    (Some(_), _) => continue,
                };
                let _ = tx.send(with_node(req));
                sent.insert(kind, want);
            }
        };
    send_changes(&mut sent, &mut with_node);
    let mut client = AggregatedDiscoveryServiceClient::new(channel)
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX);
    let mut inbound = match client
        .delta_aggregated_resources(UnboundedReceiverStream::new(rx))
        .await
    {
        Ok(r) => r.into_inner(),
        Err(e) => {
            return Ended {
                responses: 0,
                error: e.to_string(),
            };
        }
    };
    state.set_connected(true);
    let mut responses = 0;
    loop {
        tokio::select! {
            msg = inbound.message() => {
                let resp = match msg {
                    Ok(Some(r)) => r,
                    Ok(None) => return Ended { responses, error: "closed by the server".into() },
                    Err(e) => return Ended { responses, error: e.to_string() },
                };
                responses += 1;
                let received = Instant::now();
                let Some(kind) = Kind::from_type_url(&resp.type_url) else {
                    tracing::warn!("xDS: ignoring a response of unknown type {}", resp.type_url);
                    continue;
                };
                let resources = resp
                    .resources
                    .into_iter()
                    .filter_map(|r| Some((r.name, r.version, r.resource?)))
                    .collect();
                let update = Update::Delta {
                    system_version: resp.system_version_info.clone(),
                    resources,
                    removed: resp.removed_resources,
                };
                let error_detail = match state.apply(kind, update, received) {
                    Ok(()) => None,
                    Err(e) => {
                        tracing::warn!("xDS: rejected {} nonce {}: {e}", kind.short(), resp.nonce);
                        Some(Status { code: INVALID_ARGUMENT, message: e, details: vec![] })
                    }
                };
                let _ = tx.send(with_node(DeltaDiscoveryRequest {
                    type_url: kind.type_url(),
                    response_nonce: resp.nonce,
                    error_detail,
                    ..Default::default()
                }));
                send_changes(&mut sent, &mut with_node);
            }
            Ok(()) = changed.changed() => send_changes(&mut sent, &mut with_node),
        }
    }
}
