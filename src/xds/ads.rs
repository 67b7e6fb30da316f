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
                    delta(channel, &node, &state).await
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

pub(crate) async fn connect(target: &Target, timeout: Duration) -> Result<Channel, String> {
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

/// One flavour of the protocol: the requests it sends as subscriptions change, and how
/// it answers a response.
trait Protocol {
    type Request;
    type Response;
    /// Requests for the subscriptions that changed since the last call.
    fn changes(&mut self, state: &Handle) -> Vec<Self::Request>;
    /// Applies a response and returns its ACK or NACK (`None` for a type pilotfish
    /// does not know, which is ignored as Envoy ignores unwatched types).
    fn answer(
        &mut self,
        state: &Handle,
        resp: Self::Response,
        received: Instant,
    ) -> Option<Self::Request>;
}

/// Runs one stream: the first requests, then responses answered and subscription
/// changes sent, until the stream ends.
async fn pump<P: Protocol>(
    mut proto: P,
    tx: mpsc::UnboundedSender<P::Request>,
    opened: impl std::future::Future<
        Output = Result<tonic::Response<tonic::Streaming<P::Response>>, tonic::Status>,
    >,
    state: &Handle,
) -> Ended {
    let send = |reqs: Vec<P::Request>| {
        for r in reqs {
            let _ = tx.send(r);
        }
    };
    // The first requests are queued before the stream opens: they are its first messages.
    send(proto.changes(state));
    let mut inbound = match opened.await {
        Ok(r) => r.into_inner(),
        Err(e) => {
            return Ended {
                responses: 0,
                error: e.to_string(),
            };
        }
    };
    state.set_connected(true);
    let mut changed = state.subscribe();
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
                if let Some(ack) = proto.answer(state, resp, Instant::now()) {
                    let _ = tx.send(ack);
                }
                send(proto.changes(state));
            }
            Ok(()) = changed.changed() => send(proto.changes(state)),
        }
    }
}

/// The node, on every request or only on the stream's first.
struct NodeOnce {
    node: Node,
    every_request: bool,
    sent: bool,
}

impl NodeOnce {
    fn take(&mut self) -> Option<Node> {
        let give = self.every_request || !self.sent;
        self.sent = true;
        give.then(|| self.node.clone())
    }
}

/// The kind of a response's type URL; a type pilotfish does not know is logged and
/// ignored.
fn unknown_ignored(type_url: &str) -> Option<Kind> {
    let kind = Kind::from_type_url(type_url);
    if kind.is_none() {
        tracing::warn!("xDS: ignoring a response of unknown type {type_url}");
    }
    kind
}

fn nack(kind: Kind, what: &str, result: Result<(), String>) -> Option<Status> {
    result.err().map(|e| {
        tracing::warn!("xDS: rejected {} {what}: {e}", kind.short());
        Status {
            code: INVALID_ARGUMENT,
            message: e,
            details: vec![],
        }
    })
}

/// State of the world: one `DiscoveryRequest` per type when its subscription changes,
/// and one per response (ACK or NACK).
struct Sotw {
    node: NodeOnce,
    sent: HashMap<Kind, Wanted>,
    nonces: HashMap<Kind, String>,
}

impl Protocol for Sotw {
    type Request = DiscoveryRequest;
    type Response = envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse;

    fn changes(&mut self, state: &Handle) -> Vec<DiscoveryRequest> {
        let mut out = Vec::new();
        for kind in Kind::ALL {
            let Some(want) = state.wanted(kind) else {
                continue;
            };
            let before = self.sent.get(&kind);
            // Never open a named subscription with no names: that would be a wildcard.
            if before == Some(&want) || (before.is_none() && want == Wanted::Names(BTreeSet::new()))
            {
                continue;
            }
            out.push(DiscoveryRequest {
                version_info: state.version(kind),
                node: self.node.take(),
                resource_names: names(&want),
                type_url: kind.type_url(),
                response_nonce: self.nonces.get(&kind).cloned().unwrap_or_default(),
                ..Default::default()
            });
            self.sent.insert(kind, want);
        }
        out
    }

    fn answer(
        &mut self,
        state: &Handle,
        resp: Self::Response,
        received: Instant,
    ) -> Option<DiscoveryRequest> {
        let kind = unknown_ignored(&resp.type_url)?;
        let what = format!("version {}", resp.version_info);
        let update = Update::Full {
            version: resp.version_info,
            resources: resp.resources,
        };
        let result = state.apply(kind, update, received);
        self.nonces.insert(kind, resp.nonce.clone());
        let want = state.wanted(kind).unwrap_or(Wanted::Names(BTreeSet::new()));
        let req = DiscoveryRequest {
            version_info: state.version(kind),
            node: self.node.take(),
            resource_names: names(&want),
            type_url: kind.type_url(),
            response_nonce: resp.nonce,
            error_detail: nack(kind, &what, result),
            ..Default::default()
        };
        self.sent.insert(kind, want);
        Some(req)
    }
}

async fn sotw(channel: Channel, cfg: &AdsConfig, node: &Node, state: &Handle) -> Ended {
    let (tx, rx) = mpsc::unbounded_channel();
    let mut client = AggregatedDiscoveryServiceClient::new(channel)
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX);
    let proto = Sotw {
        node: NodeOnce {
            node: node.clone(),
            every_request: !cfg.node_on_first_message_only,
            sent: false,
        },
        sent: HashMap::new(),
        nonces: HashMap::new(),
    };
    let opened = client.stream_aggregated_resources(UnboundedReceiverStream::new(rx));
    pump(proto, tx, opened, state).await
}

/// Delta: the first request of each type carries the versions already held (so the
/// server sends only what changed), later ones subscribe and unsubscribe names.
struct Delta {
    node: NodeOnce,
    sent: HashMap<Kind, Wanted>,
}

impl Protocol for Delta {
    type Request = DeltaDiscoveryRequest;
    type Response = envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryResponse;

    fn changes(&mut self, state: &Handle) -> Vec<DeltaDiscoveryRequest> {
        let mut out = Vec::new();
        for kind in Kind::ALL {
            let Some(want) = state.wanted(kind) else {
                continue;
            };
            let mut req = match (self.sent.get(&kind), &want) {
                (Some(before), _) if *before == want => continue,
                (None, Wanted::Names(n)) if n.is_empty() => continue,
                (None, w) => DeltaDiscoveryRequest {
                    resource_names_subscribe: names(w),
                    initial_resource_versions: state.known_versions(kind),
                    ..Default::default()
                },
                (Some(Wanted::Names(before)), Wanted::Names(now)) => DeltaDiscoveryRequest {
                    resource_names_subscribe: now.difference(before).cloned().collect(),
                    resource_names_unsubscribe: before.difference(now).cloned().collect(),
                    ..Default::default()
                },
                // A wildcard type never changes its subscription.
                (Some(_), _) => continue,
            };
            req.type_url = kind.type_url();
            req.node = self.node.take();
            out.push(req);
            self.sent.insert(kind, want);
        }
        out
    }

    fn answer(
        &mut self,
        state: &Handle,
        resp: Self::Response,
        received: Instant,
    ) -> Option<DeltaDiscoveryRequest> {
        let kind = unknown_ignored(&resp.type_url)?;
        let resources = resp
            .resources
            .into_iter()
            .filter_map(|r| Some((r.name, r.version, r.resource?)))
            .collect();
        let update = Update::Delta {
            system_version: resp.system_version_info,
            resources,
            removed: resp.removed_resources,
        };
        let what = format!("nonce {}", resp.nonce);
        Some(DeltaDiscoveryRequest {
            node: self.node.take(),
            type_url: resp.type_url,
            response_nonce: resp.nonce,
            error_detail: nack(kind, &what, state.apply(kind, update, received)),
            ..Default::default()
        })
    }
}

async fn delta(channel: Channel, node: &Node, state: &Handle) -> Ended {
    let (tx, rx) = mpsc::unbounded_channel();
    let mut client = AggregatedDiscoveryServiceClient::new(channel)
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX);
    // Envoy sends the node on a delta stream's first request only.
    let proto = Delta {
        node: NodeOnce {
            node: node.clone(),
            every_request: false,
            sent: false,
        },
        sent: HashMap::new(),
    };
    let opened = client.delta_aggregated_resources(UnboundedReceiverStream::new(rx));
    pump(proto, tx, opened, state).await
}
