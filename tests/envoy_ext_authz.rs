//! `envoy.filters.http.ext_authz`, pilotfish and Envoy 1.40 on the same bootstrap,
//! against in-test authorization services: a gRPC `Authorization` server and an HTTP
//! one. For each request, the client's answer, what the upstream received and what the
//! authorization service was asked must be the same; then the counters. Covers
//! allow (headers set, appended, removed, added to the response), deny (the service's
//! status, headers and body; the default 403), errors (timeout, gRPC failure, HTTP 5xx:
//! `status_on_error`, `failure_mode_allow` with its header), `with_request_body`
//! (buffered, 413 when too large), per-route `disabled` and `context_extensions`, and
//! Istio's CUSTOM action shape: an RBAC filter's shadow rules gating the check through
//! `filter_enabled_metadata`.
mod common;

use std::{
    collections::BTreeMap,
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use common::*;
use envoy_types::pb::{
    envoy::{
        config::core::v3::{HeaderValue, HeaderValueOption},
        service::auth::v3::{
            CheckRequest, CheckResponse, DeniedHttpResponse, OkHttpResponse,
            authorization_server::{Authorization, AuthorizationServer},
            check_response::HttpResponse,
        },
        r#type::v3::HttpStatus,
    },
    google::{protobuf::BoolValue, rpc::Status as RpcStatus},
};
use http_body_util::{BodyExt, Full};
use hyper::{server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;

const EXT_AUTHZ: &str = "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz";
const PER_ROUTE: &str =
    "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute";
const RBAC_HTTP: &str = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC";
const ROUTER: &str = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router";

/// What the gRPC service was asked, less what differs by nature (addresses' ports,
/// time, the request id's value).
type Asked = BTreeMap<String, String>;

#[derive(Clone, Default)]
struct GrpcAuthz {
    asked: Arc<Mutex<Vec<Asked>>>,
}

fn header(k: &str, v: &str, append: Option<bool>) -> HeaderValueOption {
    #[allow(deprecated)]
    HeaderValueOption {
        header: Some(HeaderValue {
            key: k.into(),
            value: v.into(),
            ..Default::default()
        }),
        append: append.map(|value| BoolValue { value }),
        ..Default::default()
    }
}

#[tonic::async_trait]
impl Authorization for GrpcAuthz {
    async fn check(
        &self,
        req: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        let attrs = req.into_inner().attributes.unwrap_or_default();
        let http = attrs
            .request
            .clone()
            .and_then(|r| r.http)
            .unwrap_or_default();
        let mut asked = Asked::new();
        for (k, v) in &http.headers {
            if k != "x-request-id" {
                asked.insert(format!("header {k}"), v.clone());
            }
        }
        asked.insert("id set".into(), (!http.id.is_empty()).to_string());
        asked.insert("method".into(), http.method.clone());
        asked.insert("path".into(), http.path.clone());
        asked.insert("host".into(), http.host.clone());
        asked.insert("scheme".into(), http.scheme.clone());
        asked.insert("query".into(), http.query.clone());
        asked.insert("protocol".into(), http.protocol.clone());
        asked.insert("size".into(), http.size.to_string());
        asked.insert("body".into(), http.body.clone());
        asked.insert(
            "raw_body".into(),
            String::from_utf8_lossy(&http.raw_body).into(),
        );
        for (k, v) in &attrs.context_extensions {
            asked.insert(format!("context {k}"), v.clone());
        }
        let ip =
            |p: &Option<envoy_types::pb::envoy::service::auth::v3::attribute_context::Peer>| {
                use envoy_types::pb::envoy::config::core::v3::address::Address;
                match p
                    .as_ref()
                    .and_then(|p| p.address.as_ref())
                    .and_then(|a| a.address.as_ref())
                {
                    Some(Address::SocketAddress(s)) => s.address.clone(),
                    _ => String::new(),
                }
            };
        asked.insert("source ip".into(), ip(&attrs.source));
        asked.insert("destination ip".into(), ip(&attrs.destination));
        self.asked.lock().unwrap().push(asked);
        let path = http.path.split('?').next().unwrap_or("").to_owned();
        let name = path.rsplit('/').next().unwrap_or("");
        let resp = match name {
            "slow" => {
                tokio::time::sleep(Duration::from_secs(2)).await;
                CheckResponse::default()
            }
            "fail" => return Err(tonic::Status::unavailable("down for maintenance")),
            "deny" => CheckResponse {
                status: Some(RpcStatus {
                    code: 7,
                    ..Default::default()
                }),
                http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
                    status: Some(HttpStatus { code: 401 }),
                    headers: vec![header("x-deny-reason", "no ticket", None)],
                    body: "go away".into(),
                })),
                ..Default::default()
            },
            "deny-plain" => CheckResponse {
                status: Some(RpcStatus {
                    code: 7,
                    ..Default::default()
                }),
                ..Default::default()
            },
            _ => CheckResponse {
                status: Some(RpcStatus::default()),
                http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
                    headers: vec![
                        header("x-authz", "granted", None),
                        header("x-added", "by-authz", Some(true)),
                    ],
                    headers_to_remove: vec!["x-remove-me".into()],
                    response_headers_to_add: vec![header("x-authz-resp", "yes", None)],
                    ..Default::default()
                })),
                ..Default::default()
            },
        };
        Ok(tonic::Response::new(resp))
    }
}

async fn grpc_authz() -> (SocketAddr, GrpcAuthz) {
    let svc = GrpcAuthz::default();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let server = AuthorizationServer::new(svc.clone());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(server)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(l)),
    );
    (addr, svc)
}

/// The HTTP authorization service: answers by the last path segment, records what it
/// was sent (method, path, headers but the request id, body).
async fn http_authz() -> (SocketAddr, Arc<Mutex<Vec<Asked>>>) {
    let asked: Arc<Mutex<Vec<Asked>>> = Arc::default();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let record = asked.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let record = record.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let record = record.clone();
                    async move {
                        let mut a = Asked::new();
                        a.insert("method".into(), req.method().to_string());
                        let path = req.uri().path().to_owned();
                        a.insert("path".into(), path.clone());
                        for (k, v) in req.headers() {
                            if k != "x-request-id" {
                                a.insert(
                                    format!("header {k}"),
                                    v.to_str().unwrap_or("?").to_owned(),
                                );
                            }
                        }
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        a.insert("body".into(), String::from_utf8_lossy(&body).into());
                        record.lock().unwrap().push(a);
                        let b = http::Response::builder();
                        let r = match path.rsplit('/').next().unwrap_or("") {
                            "deny" => b
                                .status(401)
                                .header("www-authenticate", "Bearer")
                                .header("x-deny", "why")
                                .header("x-not-for-client", "hidden")
                                .body(Full::new(Bytes::from("denied by http"))),
                            "boom" => b.status(503).body(Full::new(Bytes::from("broken"))),
                            _ => b
                                .status(200)
                                .header("x-authz-up", "ok")
                                .header("x-authz-append", "more")
                                .header("x-client-ok", "yes")
                                .header("x-not-forwarded", "no")
                                .body(Full::new(Bytes::new())),
                        };
                        Ok::<_, Infallible>(r.unwrap())
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    (addr, asked)
}

fn hcm(name: &str, routes: &str, filters: &str) -> String {
    format!(
        r#"
  - name: {name}
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {name}
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
{routes}
          http_filters:
{filters}
          - name: envoy.filters.http.router
            typed_config: {{ "@type": {ROUTER} }}"#
    )
}

fn bootstrap(up: SocketAddr, grpc: SocketAddr, http: SocketAddr) -> String {
    let plain_routes =
        "              - match: { prefix: / }\n                route: { cluster: backend }";
    let grpc_routes = format!(
        r#"              - match: {{ prefix: /open }}
                route: {{ cluster: backend }}
                typed_per_filter_config:
                  envoy.filters.http.ext_authz: {{ "@type": {PER_ROUTE}, disabled: true }}
              - match: {{ prefix: /ctx }}
                route: {{ cluster: backend }}
                typed_per_filter_config:
                  envoy.filters.http.ext_authz:
                    "@type": {PER_ROUTE}
                    check_settings: {{ context_extensions: {{ tenant: blue, zone: a }} }}
              - match: {{ prefix: /nobody }}
                route: {{ cluster: backend }}
                typed_per_filter_config:
                  envoy.filters.http.ext_authz:
                    "@type": {PER_ROUTE}
                    check_settings: {{ disable_request_body_buffering: true }}
              - match: {{ prefix: / }}
                route: {{ cluster: backend }}"#
    );
    let grpc_filter = |extra: &str| {
        format!(
            r#"          - name: envoy.filters.http.ext_authz
            typed_config:
              "@type": {EXT_AUTHZ}
              transport_api_version: V3
              grpc_service:
                envoy_grpc: {{ cluster_name: "outbound|9000||authz.default.svc.cluster.local", authority: "outbound_.9000_._.authz.default.svc.cluster.local" }}
                timeout: 0.5s
{extra}"#
        )
    };
    let strict = grpc_filter(
        "              with_request_body: { max_request_bytes: 16, allow_partial_message: false }\n",
    );
    let lenient = grpc_filter(
        "              failure_mode_allow: true\n              failure_mode_allow_header_add: true\n              status_on_error: { code: 503 }\n              stat_prefix: lenient\n              with_request_body: { max_request_bytes: 8, allow_partial_message: true, pack_as_bytes: true }\n",
    );
    let http_filter = format!(
        r#"          - name: envoy.filters.http.ext_authz
            typed_config:
              "@type": {EXT_AUTHZ}
              allowed_headers: {{ patterns: [{{ exact: x-allowed }}, {{ prefix: x-tenant- }}] }}
              http_service:
                server_uri: {{ uri: "http://authz-http.default.svc.cluster.local", cluster: authz_http, timeout: 0.5s }}
                path_prefix: /authz
                authorization_request:
                  headers_to_add: [{{ key: x-from-proxy, value: "1" }}]
                authorization_response:
                  allowed_upstream_headers: {{ patterns: [{{ exact: x-authz-up }}] }}
                  allowed_upstream_headers_to_append: {{ patterns: [{{ exact: x-authz-append }}] }}
                  allowed_client_headers: {{ patterns: [{{ exact: x-deny }}] }}
                  allowed_client_headers_on_success: {{ patterns: [{{ exact: x-client-ok }}] }}"#
    );
    // Istio's CUSTOM action: shadow rules name the requests to check; ext_authz acts
    // on those only.
    let gated_filters = format!(
        r#"          - name: envoy.filters.http.rbac
            typed_config:
              "@type": {RBAC_HTTP}
              shadow_rules:
                action: DENY
                policies:
                  "istio-ext-authz-ns[default]-policy[ext-authz]-rule[0]":
                    permissions: [{{ or_rules: {{ rules: [{{ url_path: {{ path: {{ prefix: /protected }} }} }}] }} }}]
                    principals: [{{ or_ids: {{ ids: [{{ any: true }}] }} }}]
              shadow_rules_stat_prefix: istio_ext_authz_
{}
              filter_enabled_metadata:
                filter: envoy.filters.http.rbac
                path: [{{ key: istio_ext_authz_shadow_effective_policy_id }}]
                value: {{ string_match: {{ prefix: istio-ext-authz }} }}"#,
        grpc_filter("")
    );
    format!(
        r#"
admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
static_resources:
  listeners:{grpc_l}{lenient_l}{http_l}{gated_l}
  clusters:
{backend}
  - name: "outbound|9000||authz.default.svc.cluster.local"
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{ http2_protocol_options: {{}} }}
    load_assignment:
      cluster_name: "outbound|9000||authz.default.svc.cluster.local"
      endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {gport} }} }} }} }}] }}]
  - name: authz_http
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: authz_http
      endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {hport} }} }} }} }}] }}]
"#,
        grpc_l = hcm("grpc", &grpc_routes, &strict),
        lenient_l = hcm("lenient", plain_routes, &lenient),
        http_l = hcm("http", plain_routes, &http_filter),
        gated_l = hcm("gated", plain_routes, &gated_filters),
        backend = static_cluster("backend", &[up], false),
        gport = grpc.port(),
        hport = http.port(),
    )
}

/// One request and everything observable about it.
#[derive(Debug, PartialEq)]
struct Observed {
    status: u16,
    /// Response headers of interest.
    response: BTreeMap<String, String>,
    body: String,
    /// Headers of interest the upstream received (`None`: it was not reached).
    upstream: Option<BTreeMap<String, String>>,
    /// What the authorization service was asked (`None`: not asked).
    asked: Option<Asked>,
}

const RESPONSE_HEADERS: &[&str] = &[
    "x-authz-resp",
    "x-deny-reason",
    "www-authenticate",
    "x-deny",
    "x-not-for-client",
    "x-client-ok",
    "content-type",
    "content-length",
];
const UPSTREAM_HEADERS: &[&str] = &[
    "x-envoy-auth-partial-body",
    "x-authz",
    "x-added",
    "x-remove-me",
    "x-envoy-auth-failure-mode-allowed",
    "x-authz-up",
    "x-authz-append",
    "x-not-forwarded",
];

struct Case {
    listener: &'static str,
    method: &'static str,
    path: &'static str,
    headers: &'static [(&'static str, &'static str)],
    body: &'static str,
}

const fn case(listener: &'static str, path: &'static str) -> Case {
    Case {
        listener,
        method: "GET",
        path,
        headers: &[],
        body: "",
    }
}

async fn observe(
    proxy: &Proxy,
    c: &Case,
    up: &Upstream,
    asked: &[&Arc<Mutex<Vec<Asked>>>],
) -> Observed {
    let before = up.requests().len();
    for a in asked {
        a.lock().unwrap().clear();
    }
    let mut req = http::Request::builder()
        .method(c.method)
        .uri(c.path)
        .header("host", "shop.example")
        .header("x-remove-me", "please")
        .header("x-added", "by-client");
    for (k, v) in c.headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(Bytes::from(c.body))).unwrap();
    let (status, headers, body) = send(proxy.listener(c.listener), false, req)
        .await
        .expect("an answer");
    let pick = |h: &http::HeaderMap, names: &[&str]| {
        names
            .iter()
            .filter_map(|n| {
                let all: Vec<&str> = h
                    .get_all(*n)
                    .iter()
                    .map(|v| v.to_str().unwrap_or("?"))
                    .collect();
                (!all.is_empty()).then(|| (n.to_string(), all.join(" | ")))
            })
            .collect::<BTreeMap<_, _>>()
    };
    let upstream = up
        .requests()
        .get(before)
        .map(|s| pick(&s.headers, UPSTREAM_HEADERS));
    let asked = asked
        .iter()
        .find_map(|a| a.lock().unwrap().first().cloned());
    Observed {
        status: status.as_u16(),
        response: pick(&headers, RESPONSE_HEADERS),
        body: String::from_utf8_lossy(&body).into(),
        upstream,
        asked,
    }
}

#[tokio::test]
async fn ext_authz_decides_as_envoy_does() {
    let Some(envoy) = reference_envoy() else {
        return;
    };
    let up = Upstream::start("backend").await;
    let (gaddr, gsvc) = grpc_authz().await;
    let (haddr, hasked) = http_authz().await;
    let yaml = bootstrap(up.addr, gaddr, haddr);
    let theirs = Proxy::start_bin(&envoy, &yaml, &["--disable-hot-restart"]).await;
    let ours = Proxy::start(&yaml).await;
    let asked = [&gsvc.asked, &hasked];
    let cases = [
        // gRPC, strict.
        case("grpc", "/allow"),
        Case {
            headers: &[("x-tenant", "blue"), ("x-tenant", "green")],
            ..case("grpc", "/allow?q=1&r=2")
        },
        Case {
            method: "POST",
            body: "small body",
            ..case("grpc", "/allow")
        },
        Case {
            method: "POST",
            body: "a body longer than sixteen bytes",
            ..case("grpc", "/allow")
        },
        Case {
            method: "POST",
            body: "a body longer than sixteen bytes",
            ..case("grpc", "/nobody/allow")
        },
        case("grpc", "/deny"),
        case("grpc", "/deny-plain"),
        case("grpc", "/slow"),
        case("grpc", "/fail"),
        case("grpc", "/open/deny"),
        case("grpc", "/ctx/allow"),
        case("grpc", "/ctx/deny"),
        // gRPC, failure mode allow.
        case("lenient", "/allow"),
        case("lenient", "/deny"),
        case("lenient", "/slow"),
        case("lenient", "/fail"),
        Case {
            method: "PUT",
            body: "partial body here",
            ..case("lenient", "/allow")
        },
        // HTTP service.
        Case {
            headers: &[
                ("x-allowed", "1"),
                ("x-tenant-id", "t1"),
                ("x-other", "not sent"),
                ("authorization", "Bearer abc"),
            ],
            ..case("http", "/allow?x=y")
        },
        Case {
            method: "POST",
            body: "not forwarded",
            ..case("http", "/deny")
        },
        case("http", "/boom"),
        // Istio's CUSTOM action.
        case("gated", "/protected/deny"),
        case("gated", "/protected/allow"),
        case("gated", "/public/deny"),
    ];
    let mut diff = Differences::default();
    for c in &cases {
        diff.check(
            format!("{} {} on {} {:?}", c.method, c.path, c.listener, c.headers),
            observe(&theirs, c, &up, &asked).await,
            observe(&ours, c, &up, &asked).await,
        );
    }
    diff.check(
        "ext_authz counters",
        theirs.prometheus_lines("ext_authz").await,
        ours.prometheus_lines("ext_authz").await,
    );
    diff.assert_none();
    // Not a vacuous agreement.
    let allowed = observe(&ours, &case("grpc", "/allow"), &up, &asked).await;
    assert_eq!(allowed.status, 200);
    assert_eq!(
        allowed.upstream.unwrap().get("x-authz").map(String::as_str),
        Some("granted")
    );
    let denied = observe(&ours, &case("grpc", "/deny"), &up, &asked).await;
    assert_eq!((denied.status, denied.body.as_str()), (401, "go away"));
    assert!(denied.upstream.is_none());
    let ungated = observe(&ours, &case("gated", "/public/deny"), &up, &asked).await;
    assert_eq!((ungated.status, ungated.asked), (200, None));
}
