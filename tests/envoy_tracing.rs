//! Tracing through pilotfish and Envoy 1.40 on the same bootstrap and the same
//! requests: the spans a Zipkin collector and an OTLP collector receive (name, kind,
//! tags, parentage) and the trace headers the upstream receives, compared field by
//! field after leaving out what is random (ids, times). Then two pilotfish sidecars
//! in a row: the spans of both hops line up in one trace, for Zipkin and OTLP.
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
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use pilotfish::telemetry::{
    otel_access_log::{EXPORT_PATH as LOGS_PATH, ExportLogsServiceRequest},
    tracing::otlp::{EXPORT_PATH, ExportTraceServiceRequest},
};
use prost::Message;
use serde_json::{Value, json};

/// A span as a collector received it, in one shape for both protocols.
#[derive(Debug, Clone)]
struct Got {
    trace: String,
    id: String,
    parent: Option<String>,
    name: String,
    kind: String,
    tags: BTreeMap<String, String>,
    /// Zipkin: the whole span; OTLP: the service name and span flags.
    extra: Value,
}

/// A collector on one port: Zipkin v2 JSON POSTs and OTLP/gRPC exports.
#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Got>>>,
    /// Each report's request line and headers.
    reports: Arc<Mutex<Vec<(String, http::HeaderMap)>>>,
    /// OTLP log records: the resource's attributes and the record.
    logs: Arc<Mutex<Vec<(Value, Value)>>>,
}

impl Collector {
    async fn start() -> (SocketAddr, Collector) {
        let me = Collector::default();
        let c = me.clone();
        let addr = accept_each(move |stream| {
            let c = c.clone();
            async move {
                let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let c = c.clone();
                    async move { Ok::<_, Infallible>(c.take(req).await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            }
        })
        .await;
        (addr, me)
    }

    async fn take(&self, req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
        let line = format!("{} {}", req.method(), req.uri());
        self.reports
            .lock()
            .unwrap()
            .push((line, req.headers().clone()));
        if req.uri().path() == LOGS_PATH {
            let body = req.into_body().collect().await.unwrap().to_bytes();
            let msg = ExportLogsServiceRequest::decode(&body[5..]).unwrap();
            let kv = |kvs: &[envoy_types::pb::opentelemetry::proto::common::v1::KeyValue]| {
                Value::Array(
                    kvs.iter()
                        .map(|kv| {
                            json!([
                                kv.key,
                                format!("{:?}", kv.value.as_ref().and_then(|v| v.value.as_ref()))
                            ])
                        })
                        .collect(),
                )
            };
            for rl in msg.resource_logs {
                let resource = kv(rl.resource.as_ref().map_or(&[][..], |r| &r.attributes));
                for sl in rl.scope_logs {
                    for r in sl.log_records {
                        self.logs.lock().unwrap().push((
                            resource.clone(),
                            json!({
                                "time_set": r.time_unix_nano > 0,
                                "body": format!("{:?}", r.body.as_ref().and_then(|b| b.value.as_ref())),
                                "attributes": kv(&r.attributes),
                                "trace_id": r.trace_id.iter().map(|x| format!("{x:02x}")).collect::<String>(),
                                "span_id": r.span_id.iter().map(|x| format!("{x:02x}")).collect::<String>(),
                            }),
                        ));
                    }
                }
            }
            return Response::builder()
                .header("content-type", "application/grpc")
                .header("grpc-status", "0")
                .body(Full::new(Bytes::from_static(&[0, 0, 0, 0, 0])))
                .unwrap();
        }
        let grpc = req.uri().path() == EXPORT_PATH;
        let otlp_http = req.uri().path() == "/v1/traces";
        let body = req.into_body().collect().await.unwrap().to_bytes();
        if grpc || otlp_http {
            let msg = ExportTraceServiceRequest::decode(if grpc { &body[5..] } else { &body[..] })
                .unwrap();
            for rs in msg.resource_spans {
                let service = rs
                    .resource
                    .iter()
                    .flat_map(|r| &r.attributes)
                    .find(|kv| kv.key == "service.name")
                    .map(|kv| format!("{:?}", kv.value));
                for ss in rs.scope_spans {
                    for s in ss.spans {
                        let hex =
                            |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
                        self.spans.lock().unwrap().push(Got {
                            trace: hex(&s.trace_id),
                            id: hex(&s.span_id),
                            parent: (!s.parent_span_id.is_empty()).then(|| hex(&s.parent_span_id)),
                            name: s.name.clone(),
                            kind: match s.kind {
                                2 => "SERVER".into(),
                                3 => "CLIENT".into(),
                                k => k.to_string(),
                            },
                            tags: s
                                .attributes
                                .iter()
                                .map(|kv| {
                                    let v = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                                        Some(envoy_types::pb::opentelemetry::proto::common::v1::any_value::Value::StringValue(s)) => s.clone(),
                                        other => format!("{other:?}"),
                                    };
                                    (kv.key.clone(), v)
                                })
                                .collect(),
                            extra: json!({
                                "service": service,
                                "flags": s.flags,
                                "trace_state": s.trace_state,
                            }),
                        });
                    }
                }
            }
            if otlp_http {
                return Response::builder()
                    .header("content-type", "application/x-protobuf")
                    .body(Full::default())
                    .unwrap();
            }
            return Response::builder()
                .header("content-type", "application/grpc")
                .header("grpc-status", "0")
                .body(Full::new(Bytes::from_static(&[0, 0, 0, 0, 0])))
                .unwrap();
        }
        let list: Vec<Value> = serde_json::from_slice(&body).unwrap();
        for s in list {
            let tags = s["tags"]
                .as_object()
                .map(|t| {
                    t.iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
                        .collect()
                })
                .unwrap_or_default();
            self.spans.lock().unwrap().push(Got {
                trace: s["traceId"].as_str().unwrap().to_owned(),
                id: s["id"].as_str().unwrap().to_owned(),
                parent: s["parentId"].as_str().map(str::to_owned),
                name: s["name"].as_str().unwrap_or_default().to_owned(),
                kind: s["kind"].as_str().unwrap_or_default().to_owned(),
                tags,
                extra: s,
            });
        }
        Response::builder()
            .status(202)
            .body(Full::default())
            .unwrap()
    }

    /// The span whose `http.url` is `url`, once it arrives.
    async fn span(&self, url: &str) -> Got {
        for _ in 0..200 {
            if let Some(s) = self
                .spans
                .lock()
                .unwrap()
                .iter()
                .find(|s| s.tags.get("http.url").map(String::as_str) == Some(url))
            {
                return s.clone();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no span for {url}; got {:#?}", self.spans.lock().unwrap());
    }

    fn count(&self) -> usize {
        self.spans.lock().unwrap().len()
    }
}

/// What the two proxies may differ in: ids, times, the request id but for its trace
/// digit, the Zipkin local address's port (none) and the exporter's own identity.
fn comparable(s: &Got) -> Value {
    let mut tags = s.tags.clone();
    if let Some(id) = tags.get_mut("guid:x-request-id") {
        *id = format!("<trace digit {}>", &id[14..15]);
    }
    let mut extra = s.extra.clone();
    if let Some(o) = extra.as_object_mut() {
        for k in [
            "traceId",
            "id",
            "parentId",
            "timestamp",
            "duration",
            "tags",
            "name",
            "kind",
        ] {
            o.remove(k);
        }
        if let Some(a) = o.get_mut("annotations").and_then(Value::as_array_mut) {
            for a in a {
                a.as_object_mut().unwrap().remove("timestamp");
            }
        }
    }
    json!({
        "name": s.name,
        "kind": s.kind,
        "has_parent": s.parent.is_some(),
        "trace_id_hex_len": s.trace.len(),
        "tags": tags,
        "extra": extra,
    })
}

/// The trace headers an upstream request carried, with the random parts replaced by
/// their shape.
fn trace_headers(h: &http::HeaderMap, incoming_span: Option<&str>) -> Value {
    let get = |n: &str| h.get(n).map(|v| v.to_str().unwrap().to_owned());
    let shape = |v: Option<String>| v.map(|v| format!("<{} hex>", v.len()));
    json!({
        "x-b3-traceid": shape(get("x-b3-traceid")),
        "x-b3-spanid": shape(get("x-b3-spanid")),
        "x-b3-parentspanid": get("x-b3-parentspanid").map(|p| if Some(p.as_str()) == incoming_span { "<incoming span>".to_owned() } else { p }),
        "x-b3-sampled": get("x-b3-sampled"),
        "traceparent": get("traceparent").map(|t| {
            let parts: Vec<&str> = t.split('-').collect();
            format!("{}-<{}>-<{}>-{}", parts[0], parts[1].len(), parts[2].len(), parts[3])
        }),
        "tracestate": get("tracestate"),
        "x-envoy-decorator-operation": get("x-envoy-decorator-operation"),
        "request id trace digit": get("x-request-id").map(|r| r[14..15].to_owned()),
    })
}

fn hcm(name: &str, direction: &str, tracing: &str, routes: &str) -> String {
    format!(
        r#"  - name: {name}
    traffic_direction: {direction}
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {name}
          tracing:
{tracing}
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
{routes}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }}
"#
    )
}

const OTEL_PROVIDER: &str = r#"            provider:
              name: envoy.tracers.opentelemetry
              typed_config:
                "@type": type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig
                grpc_service: { envoy_grpc: { cluster_name: otel }, timeout: 5s }
                service_name: productpage.default
"#;

/// Istio's node and its bootstrap's Zipkin, each span reported at once.
fn bootstrap(listeners: &str, clusters: &str) -> String {
    format!(
        r#"
node: {{ id: "sidecar~10.1.1.1~productpage-v1.default~default.svc.cluster.local", cluster: productpage.default }}
admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
layered_runtime:
  layers:
  - name: static
    static_layer: {{ tracing.zipkin.min_flush_spans: 1, tracing.opentelemetry.min_flush_spans: 1 }}
tracing:
  http:
    name: envoy.tracers.zipkin
    typed_config:
      "@type": type.googleapis.com/envoy.config.trace.v3.ZipkinConfig
      collector_cluster: zipkin
      collector_endpoint: /api/v2/spans
      collector_endpoint_version: HTTP_JSON
      trace_id_128bit: true
      shared_span_context: false
static_resources:
  listeners:
{listeners}
  clusters:
{clusters}
"#
    )
}

/// pilotfish, or the reference Envoy, on `yaml`.
async fn start(bin: &str, yaml: &str) -> Proxy {
    if bin == BIN {
        Proxy::start(yaml).await
    } else {
        Proxy::start_bin(bin, yaml, &["--disable-hot-restart"]).await
    }
}

async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> u16 {
    let mut b = Request::get(path);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let (status, _, _) = send(addr, false, b.body(Full::default()).unwrap())
        .await
        .unwrap();
    status.as_u16()
}

#[tokio::test]
async fn spans_and_trace_headers_match_envoy() {
    let Some(envoy) = reference_envoy() else {
        return;
    };
    // The Istio sidecar's shape: sampling and tags as istiod sends them (random
    // sampling 100 here so that every request is traced), the bootstrap's Zipkin.
    let istio_tracing = r#"            client_sampling: { value: 100 }
            random_sampling: { value: 100 }
            overall_sampling: { value: 100 }
            custom_tags:
            - tag: istio.authorization.dry_run.allow_policy.name
              metadata: { kind: { request: {} }, metadata_key: { key: envoy.filters.http.rbac, path: [ { key: istio_dry_run_allow_shadow_effective_policy_id } ] } }
            - tag: istio.canonical_service
              literal: { value: productpage }
            - tag: from_header
              request_header: { name: x-foo, default_value: none }
            - tag: from_env
              environment: { name: PILOTFISH_TRACING_TEST_UNSET, default_value: fallback }
            - tag: formatted
              value: "%REQ(:METHOD)% %RESPONSE_CODE% [%REQ(X-NOPE)%] %RESP(X-UPSTREAM)%"
"#;
    let routes = r#"              - match: { prefix: /dec }
                route: { cluster: up }
                decorator: { operation: "details.default.svc.cluster.local:9080/*" }
              - match: { prefix: /dead }
                route: { cluster: dead, timeout: 0.5s }
              - match: { prefix: / }
                route: { cluster: up }"#;
    let listeners = [
        hcm("out", "OUTBOUND", istio_tracing, routes),
        hcm("in", "INBOUND", "            random_sampling: { value: 0 }\n", routes),
        hcm(
            "otel_out",
            "OUTBOUND",
            &format!("            random_sampling: {{ value: 100 }}\n{OTEL_PROVIDER}"),
            routes,
        ),
        hcm(
            "otlp_http",
            "OUTBOUND",
            r#"            random_sampling: { value: 100 }
            provider:
              name: envoy.tracers.opentelemetry
              typed_config:
                "@type": type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig
                http_service:
                  http_uri: { uri: "http://otel-collector:4318/v1/traces", cluster: zipkin, timeout: 5s }
                  request_headers_to_add: [ { header: { key: x-tenant, value: mesh } } ]
"#,
            routes,
        ),
        hcm(
            "otel_in",
            "INBOUND",
            &format!("            random_sampling: {{ value: 0 }}\n{OTEL_PROVIDER}"),
            routes,
        ),
    ]
    .concat();

    let mut runs = Vec::new();
    for bin in [BIN.to_owned(), envoy] {
        let up = Upstream::start("up").await;
        let (collector_addr, collector) = Collector::start().await;
        // Bound and never accepting: the request times out (504, an error span).
        let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let clusters = [
            static_cluster("up", &[up.addr], false),
            static_cluster("dead", &[dead.local_addr().unwrap()], false),
            static_cluster("zipkin", &[collector_addr], false),
            static_cluster("otel", &[collector_addr], true),
        ]
        .concat();
        let yaml = bootstrap(&listeners, &clusters);
        let proxy = start(&bin, &yaml).await;
        let (out, inb) = (proxy.listener("out"), proxy.listener("in"));
        let (otel_out, otel_in) = (proxy.listener("otel_out"), proxy.listener("otel_in"));
        let otlp_http = proxy.listener("otlp_http");
        let incoming = [
            ("x-b3-traceid", "0000000000000001463ac35c9f6413ad"),
            ("x-b3-spanid", "463ac35c9f6413ad"),
            ("x-b3-sampled", "1"),
        ];
        let traceparent = [
            (
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            ),
            ("tracestate", "congo=t61rcWkgMzE"),
        ];
        let mut statuses = Vec::new();
        let host = |h: &'static str| ("host", h);
        statuses.push(get(out, "/dec/x?a=b", &[host("details:9080"), ("x-foo", "bar")]).await);
        statuses.push(
            get(
                out,
                "/plain",
                &[host("svc:80"), ("x-client-trace-id", "abc")],
            )
            .await,
        );
        statuses.push(get(out, "/dead", &[host("svc:80"), ("user-agent", "agent/1")]).await);
        let mut with_ctx = incoming.to_vec();
        with_ctx.push(host("productpage:9080"));
        statuses.push(get(inb, "/in", &with_ctx).await);
        statuses.push(get(inb, "/in2", &[host("productpage:9080")]).await);
        // Not sampled: the caller's operation is still taken off, the route's is not
        // sent on (ingress).
        statuses.push(
            get(
                inb,
                "/dec/in",
                &[
                    host("productpage:9080"),
                    ("x-envoy-decorator-operation", "caller-op"),
                ],
            )
            .await,
        );
        let mut with_tp = traceparent.to_vec();
        with_tp.push(host("reviews:9080"));
        statuses.push(get(otel_out, "/otel", &with_tp).await);
        statuses.push(get(otel_out, "/dec/otel", &[host("reviews:9080")]).await);
        statuses.push(get(otel_in, "/otel_in", &with_tp).await);
        // The client asks for a trace: the inbound span is made.
        with_tp.push(("x-client-trace-id", "client-1"));
        statuses.push(get(otel_in, "/otel_in_traced", &with_tp).await);
        statuses.push(get(otlp_http, "/over-http", &[host("ratings:9080")]).await);
        let mut spans = BTreeMap::new();
        for url in [
            "http://details:9080/dec/x?a=b",
            "http://svc:80/plain",
            "http://svc:80/dead",
            "http://productpage:9080/in",
            "http://reviews:9080/otel",
            "http://reviews:9080/dec/otel",
            "http://ratings:9080/over-http",
            "http://reviews:9080/otel_in_traced",
        ] {
            spans.insert(url, collector.span(url).await);
        }
        // Nothing more comes (the unsampled requests have no span).
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            collector.count(),
            8,
            "{bin}: {:#?}",
            collector.spans.lock().unwrap()
        );
        let upstream: Vec<Value> = up
            .requests()
            .iter()
            .map(|s| {
                json!({
                    "path": s.path,
                    "headers": trace_headers(&s.headers, Some("463ac35c9f6413ad")),
                })
            })
            .collect();
        // Relations that hold whatever the ids: the inbound span is the caller's child,
        // a root span's id is its trace id's low half (Zipkin), the OTLP child keeps
        // the caller's trace.
        let inbound = &spans["http://productpage:9080/in"];
        assert_eq!(inbound.trace, "0000000000000001463ac35c9f6413ad", "{bin}");
        assert_eq!(inbound.parent.as_deref(), Some("463ac35c9f6413ad"), "{bin}");
        let failed = &spans["http://svc:80/dead"];
        assert_eq!(
            failed.tags.get("error").map(String::as_str),
            Some("true"),
            "{bin}"
        );
        assert_eq!(failed.tags["response_flags"], "UT", "{bin}");
        let root = &spans["http://svc:80/plain"];
        // A `value` tag: an access-log format whose missing values render empty.
        assert_eq!(root.tags["formatted"], "GET 200 [] up", "{bin}");
        assert_eq!(&root.trace[16..], root.id, "{bin}");
        let otel = &spans["http://reviews:9080/otel"];
        assert_eq!(otel.trace, "0af7651916cd43dd8448eb211c80319c", "{bin}");
        assert_eq!(otel.parent.as_deref(), Some("b7ad6b7169203331"), "{bin}");
        // The span id the upstream saw is the reported span's.
        let seen = up.requests();
        let plain = seen.iter().find(|s| s.path == "/plain").unwrap();
        assert_eq!(plain.headers["x-b3-spanid"], root.id.as_str(), "{bin}");
        let stats = [
            "tracing.zipkin.spans_sent",
            "tracing.zipkin.reports_sent",
            "tracing.zipkin.reports_failed",
            "tracing.zipkin.reports_dropped",
            "tracing.opentelemetry.spans_sent",
            "http.otel_in.tracing.client_enabled",
            "http.out.tracing.random_sampling",
            "http.out.tracing.client_enabled",
            "http.in.tracing.not_traceable",
            "http.otel_in.tracing.not_traceable",
        ];
        // Reports are counted when their response is in.
        for _ in 0..100 {
            if proxy.stat("tracing.zipkin.reports_sent").await == Some(4) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut counted = BTreeMap::new();
        for s in stats {
            counted.insert(s, proxy.stat(s).await);
        }
        let reports = collector.reports.lock().unwrap().clone();
        let report = |path: &str| {
            reports
                .iter()
                .find(|(l, _)| l.starts_with(path))
                .map(|(l, h)| {
                    let get = |n: &str| h.get(n).map(|v| v.to_str().unwrap().to_owned());
                    (l.clone(), get("host"), get("content-type"), get("x-tenant"))
                })
        };
        let zipkin_report = (report("POST /api/v2/spans"), report("POST /v1/traces"));
        runs.push((
            bin,
            statuses,
            spans
                .iter()
                .map(|(k, v)| (*k, comparable(v)))
                .collect::<BTreeMap<_, _>>(),
            upstream,
            counted,
            zipkin_report,
        ));
    }
    let (ours, theirs) = (&runs[0], &runs[1]);
    let mut d = Differences::default();
    d.check("statuses", &theirs.1, &ours.1);
    for (url, span) in &ours.2 {
        d.check(format!("span {url}"), &theirs.2[url], span);
    }
    for (i, (a, b)) in ours.3.iter().zip(&theirs.3).enumerate() {
        d.check(format!("upstream request {i}"), b, a);
    }
    d.check("upstream requests", &theirs.3.len(), &ours.3.len());
    d.check("stats", &theirs.4, &ours.4);
    d.check("zipkin report", &theirs.5, &ours.5);
    d.assert_none();
}

/// Client → sidecar A (outbound) → sidecar B (inbound) → app, both pilotfish, with
/// Istio's sampling: the edge decides (100 %), B keeps that decision (its own random
/// sampling is 0) because it travels in `x-request-id`; B's span is A's child.
async fn two_hops(provider: &str) {
    let app = Upstream::start("app").await;
    let (collector_addr, collector) = Collector::start().await;
    let tracing = |random: u32| {
        format!(
            "            client_sampling: {{ value: 100 }}\n            random_sampling: {{ value: {random} }}\n            overall_sampling: {{ value: 100 }}\n{provider}"
        )
    };
    let route = r#"              - match: { prefix: / }
                route: { cluster: next }
                decorator: { operation: "reviews.default.svc.cluster.local:9080/*" }"#;
    let collectors = [
        static_cluster("zipkin", &[collector_addr], false),
        static_cluster("otel", &[collector_addr], true),
    ]
    .concat();
    let b = Proxy::start(&bootstrap(
        &hcm("inbound", "INBOUND", &tracing(0), route),
        &[
            static_cluster("next", &[app.addr], false),
            collectors.clone(),
        ]
        .concat(),
    ))
    .await;
    let a = Proxy::start(&bootstrap(
        &hcm("outbound", "OUTBOUND", &tracing(100), route),
        &[
            static_cluster("next", &[b.listener("inbound")], false),
            collectors,
        ]
        .concat(),
    ))
    .await;
    let status = get(
        a.listener("outbound"),
        "/reviews/1",
        &[("host", "reviews:9080")],
    )
    .await;
    assert_eq!(status, 200);
    let url = "http://reviews:9080/reviews/1";
    for _ in 0..200 {
        if collector.count() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let spans = collector.spans.lock().unwrap().clone();
    assert_eq!(spans.len(), 2, "{spans:#?}");
    let client = spans.iter().find(|s| s.kind == "CLIENT").expect("A's span");
    let server = spans.iter().find(|s| s.kind == "SERVER").expect("B's span");
    assert_eq!(client.tags["http.url"], url);
    assert_eq!(server.tags["http.url"], url);
    assert_eq!(client.trace, server.trace, "one trace");
    assert_eq!(client.trace.len(), 32);
    assert_eq!(
        server.parent.as_deref(),
        Some(client.id.as_str()),
        "B's span is A's child"
    );
    assert_eq!(client.parent, None);
    assert_eq!(client.name, "reviews.default.svc.cluster.local:9080/*");
    // B took the operation A propagated, and removed the header.
    assert_eq!(server.name, "reviews.default.svc.cluster.local:9080/*");
    let seen = app.requests();
    assert!(seen[0].headers.get("x-envoy-decorator-operation").is_none());
    // One request id across the hops, marked sampled.
    let id = &client.tags["guid:x-request-id"];
    assert_eq!(&id[14..15], "9");
    assert_eq!(&server.tags["guid:x-request-id"], id);
    assert_eq!(seen[0].headers["x-request-id"], id.as_str());
    // The app sees B's span as the parent of whatever it does next.
    if provider.is_empty() {
        assert_eq!(seen[0].headers["x-b3-spanid"], server.id.as_str());
        assert_eq!(seen[0].headers["x-b3-traceid"], server.trace.as_str());
    } else {
        let tp = seen[0].headers["traceparent"].to_str().unwrap().to_owned();
        assert_eq!(tp, format!("00-{}-{}-01", server.trace, server.id));
    }
}

#[tokio::test]
async fn two_sidecars_report_one_zipkin_trace() {
    two_hops("").await;
}

#[tokio::test]
async fn two_sidecars_report_one_otlp_trace() {
    two_hops(OTEL_PROVIDER).await;
}

/// `envoy.access_loggers.open_telemetry` as Istio's Telemetry API configures it (an
/// OTLP/gRPC collector, a text body, attributes), next to OpenTelemetry tracing: the
/// records both proxies export, their resource labels, and the trace they belong to.
#[tokio::test]
async fn otlp_access_logs_match_envoy() {
    let Some(envoy) = reference_envoy() else {
        return;
    };
    let extra = r#"            random_sampling: { value: 100 }
            provider:
              name: envoy.tracers.opentelemetry
              typed_config:
                "@type": type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig
                grpc_service: { envoy_grpc: { cluster_name: otel }, timeout: 5s }
          access_log:
          - name: otel
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.open_telemetry.v3.OpenTelemetryAccessLogConfig
              common_config:
                log_name: otel_envoy_accesslog
                transport_api_version: V3
                grpc_service: { envoy_grpc: { cluster_name: otel, authority: otel-collector.istio-system.svc.cluster.local } }
                filter_state_objects_to_log: [wasm.upstream_peer, wasm.downstream_peer]
              body: { string_value: "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL% %RESPONSE_CODE% %RESPONSE_FLAGS% %UPSTREAM_CLUSTER%\n" }
              attributes:
                values:
                - { key: user_agent, value: { string_value: "%REQ(USER-AGENT)%" } }
                - { key: missing, value: { string_value: "%REQ(X-NOPE)%" } }
                - { key: code, value: { string_value: "%RESPONSE_CODE%" } }
              resource_attributes:
                values:
                - { key: k8s.namespace.name, value: { string_value: default } }
"#;
    // The connection manager's `tracing` ends where its access log begins.
    let routes = r#"              - match: { prefix: /none }
                route: { cluster: empty }
              - match: { prefix: / }
                route: { cluster: up }"#;
    let mut runs = Vec::new();
    for bin in [BIN.to_owned(), envoy] {
        let up = Upstream::start("up").await;
        let (collector_addr, collector) = Collector::start().await;
        let clusters = [
            static_cluster("up", &[up.addr], false),
            static_cluster("otel", &[collector_addr], true),
            "  - name: empty\n    connect_timeout: 1s\n".to_owned(),
        ]
        .concat();
        let yaml = bootstrap(&hcm("out", "OUTBOUND", extra, routes), &clusters).replace(
            "cluster: productpage.default }",
            "cluster: productpage.default, locality: { zone: zone-a } }",
        );
        let proxy = start(&bin, &yaml).await;
        let out = proxy.listener("out");
        assert_eq!(
            get(out, "/a", &[("host", "svc:80"), ("user-agent", "ua-1")]).await,
            200
        );
        assert_eq!(get(out, "/none", &[("host", "svc:80")]).await, 503);
        let mut logs = Vec::new();
        for _ in 0..100 {
            logs = collector.logs.lock().unwrap().clone();
            if logs.len() >= 2 && collector.count() >= 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(logs.len(), 2, "{bin}: {logs:#?}");
        // Each record names its request's span.
        let spans = collector.spans.lock().unwrap().clone();
        for (_, r) in &logs {
            let trace = r["trace_id"].as_str().unwrap();
            let span = r["span_id"].as_str().unwrap();
            assert!(
                spans.iter().any(|s| s.trace == trace && s.id == span),
                "{bin}: {r} is not one of {spans:#?}"
            );
        }
        let mut comparable: Vec<Value> = logs
            .into_iter()
            .map(|(resource, mut r)| {
                let o = r.as_object_mut().unwrap();
                o.remove("trace_id");
                o.remove("span_id");
                json!({ "resource": resource, "record": r })
            })
            .collect();
        comparable.sort_by_key(|v| v.to_string());
        let authority = collector
            .reports
            .lock()
            .unwrap()
            .iter()
            .find(|(l, _)| l.contains(LOGS_PATH))
            .map(|(l, _)| l.clone());
        runs.push((comparable, authority));
    }
    let mut d = Differences::default();
    d.check("records", &runs[1].0, &runs[0].0);
    d.check("export request", &runs[1].1, &runs[0].1);
    d.assert_none();
}

/// `spawn_upstream_span` (what istiod sets on gateways): the connection manager's span
/// is a SERVER span and each upstream request gets a CLIENT child, whose context the
/// upstream receives; both proxies, Zipkin and OpenTelemetry.
#[tokio::test]
async fn upstream_spans_match_envoy() {
    let Some(envoy) = reference_envoy() else {
        return;
    };
    let spawn =
        "            random_sampling: { value: 100 }\n            spawn_upstream_span: true\n";
    let routes = r#"              - match: { prefix: / }
                route: { cluster: up }"#;
    let listeners = [
        hcm("gw", "OUTBOUND", spawn, routes),
        hcm(
            "gw_otel",
            "OUTBOUND",
            &format!("{spawn}{OTEL_PROVIDER}"),
            routes,
        ),
    ]
    .concat();
    let mut runs = Vec::new();
    for bin in [BIN.to_owned(), envoy] {
        let up = Upstream::start("up").await;
        let (collector_addr, collector) = Collector::start().await;
        let clusters = [
            static_cluster("up", &[up.addr], false),
            static_cluster("zipkin", &[collector_addr], false),
            static_cluster("otel", &[collector_addr], true),
        ]
        .concat();
        let proxy = start(&bin, &bootstrap(&listeners, &clusters)).await;
        assert_eq!(
            get(proxy.listener("gw"), "/z", &[("host", "gateway:80")]).await,
            200
        );
        assert_eq!(
            get(proxy.listener("gw_otel"), "/o", &[("host", "gateway:80")]).await,
            200
        );
        for _ in 0..100 {
            if collector.count() >= 4 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let spans = collector.spans.lock().unwrap().clone();
        assert_eq!(spans.len(), 4, "{bin}: {spans:#?}");
        let mut shapes = Vec::new();
        for (path, url) in [("/z", "http://gateway:80/z"), ("/o", "http://gateway:80/o")] {
            let down = spans
                .iter()
                .find(|s| s.tags.get("http.url").map(String::as_str) == Some(url))
                .unwrap_or_else(|| panic!("{bin}: no span for {url}: {spans:#?}"));
            let child = spans
                .iter()
                .find(|s| s.parent.as_deref() == Some(down.id.as_str()))
                .unwrap_or_else(|| panic!("{bin}: no child of {url}: {spans:#?}"));
            assert_eq!(child.trace, down.trace, "{bin}");
            // The upstream saw the child's context.
            let seen = up.requests();
            let req = seen.iter().find(|s| s.path == path).unwrap();
            let sent = req
                .headers
                .get("x-b3-spanid")
                .map(|v| v.to_str().unwrap().to_owned())
                .or_else(|| {
                    req.headers
                        .get("traceparent")
                        .map(|v| v.to_str().unwrap().split('-').nth(2).unwrap().to_owned())
                });
            assert_eq!(sent.as_deref(), Some(child.id.as_str()), "{bin} {path}");
            let mut child_tags = child.tags.clone();
            // The upstream's port is the test's own.
            for k in ["upstream_address", "peer.address"] {
                if let Some(v) = child_tags.get_mut(k) {
                    *v = v.replace(&up.addr.port().to_string(), "<port>");
                }
            }
            shapes.push(json!({
                "downstream": comparable(down),
                "child": { "name": child.name, "kind": child.kind, "tags": child_tags },
            }));
        }
        runs.push(shapes);
    }
    let mut d = Differences::default();
    for (i, (a, b)) in runs[0].iter().zip(&runs[1]).enumerate() {
        d.check(format!("request {i}"), b, a);
    }
    d.assert_none();
}
