//! gRPC through pilotfish (HTTP/2 on both sides): unary calls, error statuses carried in
//! trailers, and bidirectional streaming. The services are Envoy's own gRPC APIs from
//! envoy-types, served and called with tonic.
mod common;

use std::{net::SocketAddr, pin::Pin};

use common::*;
use envoy_types::pb::envoy::service::{
    auth::v3::{
        CheckRequest, CheckResponse,
        authorization_client::AuthorizationClient,
        authorization_server::{Authorization, AuthorizationServer},
    },
    discovery::v3::{
        DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
        aggregated_discovery_service_client::AggregatedDiscoveryServiceClient,
        aggregated_discovery_service_server::{
            AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
        },
    },
};
use futures_util::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

struct Svc;

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

async fn grpc_server() -> SocketAddr {
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

async fn proxy_for(server: SocketAddr) -> Proxy {
    let routes = r#"              - match: { prefix: "/" }
                route: { cluster: grpc }"#;
    Proxy::start(&http_bootstrap(
        routes,
        &static_cluster("grpc", &[server], true),
    ))
    .await
}

fn check_request(path: &str) -> CheckRequest {
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

#[tokio::test]
async fn unary_calls_and_error_statuses_pass_through() {
    let server = grpc_server().await;
    let proxy = proxy_for(server).await;
    let mut client = AuthorizationClient::connect(format!("http://{}", proxy.listener("http")))
        .await
        .unwrap();
    for i in 0..10 {
        let resp = client
            .check(check_request(&format!("/allow/{i}")))
            .await
            .unwrap();
        assert_eq!(
            resp.into_inner().status.unwrap().message,
            format!("ok /allow/{i}")
        );
    }
    let err = client.check(check_request("/deny")).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    assert_eq!(err.message(), "denied by test");
    proxy
        .wait_metric(
            "envoy_cluster_upstream_rq{envoy_response_code=\"200\",envoy_cluster_name=\"grpc\"}",
            11,
        )
        .await;
}

#[tokio::test]
async fn bidirectional_streaming_passes_through() {
    let server = grpc_server().await;
    let proxy = proxy_for(server).await;
    let mut client =
        AggregatedDiscoveryServiceClient::connect(format!("http://{}", proxy.listener("http")))
            .await
            .unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut responses = client
        .stream_aggregated_resources(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    // Interleaved: each response arrives before the next request is sent.
    for i in 0..5 {
        tx.send(DiscoveryRequest {
            type_url: format!("type-{i}"),
            ..Default::default()
        })
        .await
        .unwrap();
        let r = responses.message().await.unwrap().unwrap();
        assert_eq!(r.nonce, format!("type-{i}"));
    }
    drop(tx);
    // The stream ends with OK status trailers.
    assert!(responses.message().await.unwrap().is_none());
}
