//! The gRPC services the gRPC tests call through the proxy: Envoy's own APIs from
//! envoy-types, served with tonic. `Authorization/Check` answers `ok <path>` and denies
//! `/deny`; the ADS stream echoes each request's type URL as the response's nonce.
use std::{net::SocketAddr, pin::Pin};

use envoy_types::pb::envoy::service::{
    auth::v3::{
        CheckRequest, CheckResponse,
        authorization_server::{Authorization, AuthorizationServer},
    },
    discovery::v3::{
        DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
        aggregated_discovery_service_server::{
            AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
        },
    },
};
use futures_util::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

pub struct Svc;

#[tonic::async_trait]
impl Authorization for Svc {
    async fn check(&self, req: Request<CheckRequest>) -> Result<Response<CheckResponse>, Status> {
        let path = req
            .into_inner()
            .attributes
            .and_then(|a| a.request)
            .and_then(|r| r.http)
            .map(|h| h.path)
            .unwrap_or_default();
        if path == "/deny" {
            return Err(Status::permission_denied("denied by test"));
        }
        let resp = CheckResponse {
            status: Some(envoy_types::pb::google::rpc::Status {
                code: 0,
                message: format!("ok {path}"),
                details: vec![],
            }),
            ..Default::default()
        };
        Ok(Response::new(resp))
    }
}

type Out<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for Svc {
    type StreamAggregatedResourcesStream = Out<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = Out<DeltaDiscoveryResponse>;

    /// Answers every request with a response whose nonce echoes the request's type URL.
    async fn stream_aggregated_resources(
        &self,
        req: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let out = req.into_inner().map(|r| {
            r.map(|r| DiscoveryResponse {
                nonce: r.type_url,
                version_info: "v1".into(),
                ..Default::default()
            })
        });
        Ok(Response::new(Box::pin(out)))
    }

    async fn delta_aggregated_resources(
        &self,
        _: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        Err(Status::unimplemented("delta"))
    }
}

/// Both services on a fresh port.
pub async fn grpc_server() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AuthorizationServer::new(Svc))
            .add_service(AggregatedDiscoveryServiceServer::new(Svc))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(l)),
    );
    addr
}

/// A `CheckRequest` for `path`.
pub fn check_request(path: &str) -> CheckRequest {
    use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, attribute_context};
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(attribute_context::Request {
                http: Some(attribute_context::HttpRequest {
                    path: path.into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

/// Calls through `addr` (HTTP/2 cleartext): three `Check`s that succeed, one denied
/// (`PERMISSION_DENIED`, a trailers-only answer), and an ADS stream of four messages
/// each way that ends with status OK.
pub async fn call_three_deny_one_stream_four(addr: SocketAddr) {
    use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
    let mut auth = AuthorizationClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    for _ in 0..3 {
        auth.check(check_request("/ok")).await.unwrap();
    }
    auth.check(check_request("/deny")).await.unwrap_err();
    let mut ads = AdsStream::open(addr).await;
    for i in 0..4 {
        ads.exchange(&format!("t{i}")).await;
    }
    ads.close().await;
}

/// An ADS stream through the proxy, whose server echoes each request.
pub struct AdsStream {
    tx: tokio::sync::mpsc::Sender<DiscoveryRequest>,
    responses: Streaming<DiscoveryResponse>,
}

impl AdsStream {
    pub async fn open(addr: SocketAddr) -> AdsStream {
        use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
        let mut ads = AggregatedDiscoveryServiceClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let responses = ads
            .stream_aggregated_resources(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        AdsStream { tx, responses }
    }

    /// One message each way.
    pub async fn exchange(&mut self, type_url: &str) {
        self.tx
            .send(DiscoveryRequest {
                type_url: type_url.to_owned(),
                ..Default::default()
            })
            .await
            .unwrap();
        self.responses.message().await.unwrap().unwrap();
    }

    /// Ends the stream from the client; the server ends it with OK.
    pub async fn close(self) {
        let AdsStream { tx, mut responses } = self;
        drop(tx);
        assert!(responses.message().await.unwrap().is_none());
    }
}
