//! gRPC through pilotfish (HTTP/2 on both sides): unary calls, error statuses carried in
//! trailers, and bidirectional streaming. The services are Envoy's own gRPC APIs from
//! envoy-types, served and called with tonic.
mod common;

use std::net::SocketAddr;

use common::{grpc_services::*, *};
use envoy_types::pb::envoy::service::{
    auth::v3::authorization_client::AuthorizationClient,
    discovery::v3::{
        DiscoveryRequest, aggregated_discovery_service_client::AggregatedDiscoveryServiceClient,
    },
};

async fn proxy_for(server: SocketAddr) -> Proxy {
    let routes = r#"              - match: { prefix: "/" }
                route: { cluster: grpc }"#;
    Proxy::start(&http_bootstrap(
        routes,
        &static_cluster("grpc", &[server], true),
    ))
    .await
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
