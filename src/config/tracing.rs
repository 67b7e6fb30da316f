//! Tracing configuration: the bootstrap's `tracing.http` provider, a connection
//! manager's `tracing` (sampling, custom tags, its own provider) and the route
//! `decorator`. Providers are Zipkin (`envoy.tracers.zipkin`, v2 JSON) and
//! OpenTelemetry (`envoy.tracers.opentelemetry`, OTLP over gRPC or HTTP).
use std::{sync::Arc, time::Duration};

use envoy_types::pb::envoy::{
    config::{
        core::v3::{GrpcService, HttpService, http_uri},
        trace::v3::{
            OpenTelemetryConfig, ZipkinConfig,
            tracing::Http as Provider,
            zipkin_config::{CollectorEndpointVersion, TraceContextOption},
        },
    },
    extensions::filters::network::http_connection_manager::v3::http_connection_manager,
    r#type::{
        metadata::v3::metadata_kind,
        tracing::v3::{CustomTag as CustomTagProto, custom_tag},
    },
};
use http::{HeaderName, HeaderValue};

use super::proto;

type Result<T> = std::result::Result<T, String>;

const ZIPKIN: &str = "envoy.config.trace.v3.ZipkinConfig";
const OTEL: &str = "envoy.config.trace.v3.OpenTelemetryConfig";

/// A span exporter and how it propagates context.
#[derive(Debug, Clone, PartialEq)]
pub enum TracingProvider {
    Zipkin(ZipkinSettings),
    OpenTelemetry(OtelSettings),
}

#[derive(Debug, Clone, PartialEq)]
pub struct ZipkinSettings {
    /// Where spans are POSTed: the cluster, the path, and the `Host` header.
    pub cluster: String,
    pub endpoint: String,
    pub hostname: String,
    /// Extra request headers (`collector_service.request_headers_to_add`).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// The request timeout (Envoy's 5 s, or `collector_service.http_uri.timeout`).
    pub timeout: Duration,
    pub trace_id_128bit: bool,
    /// `shared_span_context` (default true): a server span keeps the client's span id.
    pub shared_span_context: bool,
    /// `trace_context_option: USE_B3_WITH_W3C_PROPAGATION`: `traceparent` is read when
    /// there are no B3 headers, and written next to them.
    pub w3c: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct OtelSettings {
    pub export: OtelExport,
    /// `service_name` (default `unknown_service:envoy`).
    pub service_name: String,
    /// `max_cache_size` (default 1024): spans held while the collector is away.
    pub max_cache_size: usize,
    pub sdk_attributes: bool,
    pub service_name_attribute: bool,
    pub scope: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum OtelExport {
    /// No `grpc_service` nor `http_service`: spans are made (and propagated) but not
    /// exported, as in Envoy.
    None,
    Grpc {
        cluster: String,
        authority: String,
        timeout: Duration,
        metadata: Vec<(HeaderName, HeaderValue)>,
    },
    Http {
        cluster: String,
        /// The `http_uri.uri`'s authority and path.
        authority: String,
        path: String,
        timeout: Duration,
        headers: Vec<(HeaderName, HeaderValue)>,
    },
}

/// Which provider a connection manager's spans go to.
#[derive(Debug, Clone, PartialEq)]
pub enum ProviderRef {
    /// `tracing.provider` of the connection manager.
    Own(Arc<TracingProvider>),
    /// The bootstrap's `tracing.http`, if it has one.
    Bootstrap,
}

/// A connection manager's `tracing`. Sampling figures are in hundredths of a percent
/// (Envoy's ten-thousand denominator).
#[derive(Debug, Clone, PartialEq)]
pub struct TracingConfig {
    pub provider: ProviderRef,
    pub client_sampling: u32,
    pub random_sampling: u32,
    pub overall_sampling: u32,
    pub max_path_tag_length: usize,
    pub custom_tags: Vec<CustomTag>,
    /// `spawn_upstream_span`: each upstream attempt gets a child span (what istiod
    /// sets on gateways); the downstream span is then a SERVER span.
    pub spawn_upstream_span: bool,
    /// The request id's trace reason is packed into it (`pack_trace_reason`).
    pub pack_trace_reason: bool,
    /// Random sampling is derived from the request id
    /// (`use_request_id_for_trace_sampling`), so every hop decides alike.
    pub sample_by_request_id: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CustomTag {
    pub tag: String,
    pub value: TagValue,
}

#[derive(Debug, Clone, PartialEq)]
pub enum TagValue {
    /// A literal, or an environment variable read when the config loads (as Envoy).
    Fixed(String),
    RequestHeader {
        name: HeaderName,
        default: String,
    },
    /// The request's dynamic metadata under `filter`, at `path`.
    RequestMetadata {
        filter: String,
        path: Vec<String>,
        default: String,
    },
    /// `value`: an access-log format, a missing value rendering empty.
    Format(Vec<crate::telemetry::access_log::Piece>),
}

/// A route's `decorator`.
#[derive(Debug, Clone, PartialEq)]
pub struct Decorator {
    pub operation: String,
    /// `propagate` (default true): the operation travels in
    /// `x-envoy-decorator-operation` (this value, made once; none when the operation
    /// cannot be a header value).
    pub propagate: Option<HeaderValue>,
}

/// The bootstrap's `tracing.http`.
pub fn bootstrap(http: &Provider, path: &str) -> Result<TracingProvider> {
    provider(http, path)
}

/// A `tracing.http` / `tracing.provider`: the extension, by its typed config.
pub fn provider(p: &Provider, path: &str) -> Result<TracingProvider> {
    use envoy_types::pb::envoy::config::trace::v3::tracing::http::ConfigType;
    let Some(ConfigType::TypedConfig(any)) = &p.config_type else {
        return Err(format!("{path}.typed_config: required"));
    };
    let cpath = format!("{path}.typed_config");
    match proto::type_name(&any.type_url) {
        ZIPKIN => zipkin(
            &proto::unpack(any).map_err(|e| format!("{cpath}: {e}"))?,
            &cpath,
        ),
        OTEL => otel(
            &proto::unpack(any).map_err(|e| format!("{cpath}: {e}"))?,
            &cpath,
        ),
        other => Err(format!("{cpath} ({other}): not supported")),
    }
}

fn zipkin(z: &ZipkinConfig, path: &str) -> Result<TracingProvider> {
    if z.collector_endpoint_version() != CollectorEndpointVersion::HttpJson {
        return Err(format!(
            "{path}.collector_endpoint_version: {} is not supported (HTTP_JSON is)",
            z.collector_endpoint_version().as_str_name()
        ));
    }
    let (cluster, endpoint, hostname, headers, timeout) = match &z.collector_service {
        Some(s) => {
            let spath = format!("{path}.collector_service");
            let t = http_service(s, &spath)?;
            (t.cluster, t.path, t.authority, t.headers, t.timeout)
        }
        None => {
            if z.collector_cluster.is_empty() {
                return Err(format!("{path}.collector_cluster: required"));
            }
            if z.collector_endpoint.is_empty() {
                return Err(format!("{path}.collector_endpoint: required"));
            }
            let hostname = if z.collector_hostname.is_empty() {
                z.collector_cluster.clone()
            } else {
                z.collector_hostname.clone()
            };
            (
                z.collector_cluster.clone(),
                z.collector_endpoint.clone(),
                hostname,
                Vec::new(),
                Duration::from_secs(5),
            )
        }
    };
    Ok(TracingProvider::Zipkin(ZipkinSettings {
        cluster,
        endpoint,
        hostname,
        headers,
        timeout,
        trace_id_128bit: z.trace_id_128bit,
        shared_span_context: z.shared_span_context.as_ref().is_none_or(|b| b.value),
        w3c: z.trace_context_option() == TraceContextOption::UseB3WithW3cPropagation,
    }))
}

/// An `HttpService`'s cluster, authority, path, headers and timeout.
struct HttpTarget {
    cluster: String,
    authority: String,
    path: String,
    headers: Vec<(HeaderName, HeaderValue)>,
    timeout: Duration,
}

fn http_service(s: &HttpService, path: &str) -> Result<HttpTarget> {
    let uri = s
        .http_uri
        .as_ref()
        .ok_or_else(|| format!("{path}.http_uri: required"))?;
    let cluster = match &uri.http_upstream_type {
        Some(http_uri::HttpUpstreamType::Cluster(c)) if !c.is_empty() => c.clone(),
        _ => return Err(format!("{path}.http_uri.cluster: required")),
    };
    let parsed: http::Uri = uri
        .uri
        .parse()
        .map_err(|_| format!("{path}.http_uri.uri: '{}' is not a URI", uri.uri))?;
    let authority = parsed
        .authority()
        .map(|a| a.as_str().to_owned())
        .ok_or_else(|| format!("{path}.http_uri.uri: '{}' has no host", uri.uri))?;
    let timeout = uri
        .timeout
        .as_ref()
        .map(super::compile::duration)
        .ok_or_else(|| format!("{path}.http_uri.timeout: required"))?;
    let headers = s
        .request_headers_to_add
        .iter()
        .enumerate()
        .map(|(i, o)| {
            let p = format!("{path}.request_headers_to_add[{i}]");
            let h = o
                .header
                .as_ref()
                .ok_or_else(|| format!("{p}.header: required"))?;
            header_pair(&h.key, &h.value, &p)
        })
        .collect::<Result<_>>()?;
    Ok(HttpTarget {
        cluster,
        authority,
        path: parsed
            .path_and_query()
            .map_or("/".into(), |p| p.as_str().to_owned()),
        headers,
        timeout,
    })
}

fn header_pair(k: &str, v: &str, path: &str) -> Result<(HeaderName, HeaderValue)> {
    let name = HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes())
        .map_err(|_| format!("{path}.key: '{k}' is not a header name"))?;
    let value =
        HeaderValue::from_str(v).map_err(|_| format!("{path}.value: not a header value"))?;
    Ok((name, value))
}

fn otel(o: &OpenTelemetryConfig, path: &str) -> Result<TracingProvider> {
    let export = match (&o.grpc_service, &o.http_service) {
        (Some(_), Some(_)) => {
            return Err(format!(
                "{path}: only one of grpc_service and http_service may be set"
            ));
        }
        (Some(g), None) => grpc_export(g, &format!("{path}.grpc_service"))?,
        (None, Some(h)) => {
            let t = http_service(h, &format!("{path}.http_service"))?;
            OtelExport::Http {
                cluster: t.cluster,
                authority: t.authority,
                path: t.path,
                timeout: t.timeout,
                headers: t.headers,
            }
        }
        (None, None) => OtelExport::None,
    };
    let on = |b: &Option<envoy_types::pb::google::protobuf::BoolValue>| {
        b.as_ref().is_none_or(|b| b.value)
    };
    Ok(TracingProvider::OpenTelemetry(OtelSettings {
        export,
        service_name: if o.service_name.is_empty() {
            "unknown_service:envoy".into()
        } else {
            o.service_name.clone()
        },
        max_cache_size: o.max_cache_size.as_ref().map_or(1024, |v| v.value as usize),
        sdk_attributes: on(&o.set_telemetry_sdk_resource_attributes),
        service_name_attribute: on(&o.set_service_name_resource_attribute),
        scope: on(&o.set_instrumentation_scope),
    }))
}

fn grpc_export(g: &GrpcService, path: &str) -> Result<OtelExport> {
    // No timeout: Envoy's async client waits as long as it takes (a minute here).
    let t = super::http_filters::envoy_grpc(g, path, Duration::from_secs(60))?;
    Ok(OtelExport::Grpc {
        cluster: t.cluster,
        authority: t.authority,
        timeout: t.timeout,
        metadata: t.metadata,
    })
}

/// Envoy's `Percent` (0–100, default `default`) in hundredths of a percent.
fn percent(p: Option<&envoy_types::pb::envoy::r#type::v3::Percent>, default: f64) -> u32 {
    let v = p.map_or(default, |p| p.value);
    (v.clamp(0.0, 100.0) * 100.0).round() as u32
}

/// A connection manager's `tracing`, with its request id settings.
pub fn hcm(
    t: &http_connection_manager::Tracing,
    request_id: Option<
        &envoy_types::pb::envoy::extensions::request_id::uuid::v3::UuidRequestIdConfig,
    >,
    path: &str,
) -> Result<TracingConfig> {
    let provider = match &t.provider {
        Some(p) => ProviderRef::Own(Arc::new(provider(p, &format!("{path}.provider"))?)),
        None => ProviderRef::Bootstrap,
    };
    // Timing events as span logs are not implemented: refused rather than left out.
    if t.verbose {
        return Err(format!("{path}.verbose: not supported"));
    }
    let custom_tags = t
        .custom_tags
        .iter()
        .enumerate()
        .map(|(i, c)| custom_tag(c, &format!("{path}.custom_tags[{i}]")))
        .collect::<Result<_>>()?;
    Ok(TracingConfig {
        provider,
        // Envoy keeps whole percents of the client share.
        client_sampling: percent(t.client_sampling.as_ref(), 100.0) / 100 * 100,
        random_sampling: percent(t.random_sampling.as_ref(), 100.0),
        overall_sampling: percent(t.overall_sampling.as_ref(), 100.0),
        max_path_tag_length: t
            .max_path_tag_length
            .as_ref()
            .map_or(256, |v| v.value as usize),
        custom_tags,
        spawn_upstream_span: t.spawn_upstream_span.as_ref().is_some_and(|b| b.value),
        pack_trace_reason: request_id
            .and_then(|r| r.pack_trace_reason.as_ref())
            .is_none_or(|b| b.value),
        sample_by_request_id: request_id
            .and_then(|r| r.use_request_id_for_trace_sampling.as_ref())
            .is_none_or(|b| b.value),
    })
}

fn custom_tag(c: &CustomTagProto, path: &str) -> Result<CustomTag> {
    if c.tag.is_empty() {
        return Err(format!("{path}.tag: required"));
    }
    let value = match &c.r#type {
        Some(custom_tag::Type::Literal(l)) if l.value.is_empty() => {
            return Err(format!("{path}.literal.value: required"));
        }
        Some(custom_tag::Type::Literal(l)) => TagValue::Fixed(l.value.clone()),
        Some(custom_tag::Type::Environment(e)) => {
            if e.name.is_empty() {
                return Err(format!("{path}.environment.name: required"));
            }
            TagValue::Fixed(std::env::var(&e.name).unwrap_or_else(|_| e.default_value.clone()))
        }
        Some(custom_tag::Type::RequestHeader(h)) if h.name.is_empty() => {
            return Err(format!("{path}.request_header.name: required"));
        }
        Some(custom_tag::Type::RequestHeader(h)) => TagValue::RequestHeader {
            name: HeaderName::from_bytes(h.name.to_ascii_lowercase().as_bytes()).map_err(|_| {
                format!(
                    "{path}.request_header.name: '{}' is not a header name",
                    h.name
                )
            })?,
            default: h.default_value.clone(),
        },
        Some(custom_tag::Type::Metadata(m)) => {
            let mpath = format!("{path}.metadata");
            match m.kind.as_ref().and_then(|k| k.kind.as_ref()) {
                Some(metadata_kind::Kind::Request(_)) => {}
                Some(other) => {
                    let which = match other {
                        metadata_kind::Kind::Route(_) => "route",
                        metadata_kind::Kind::Cluster(_) => "cluster",
                        metadata_kind::Kind::Host(_) => "host",
                        metadata_kind::Kind::Request(_) => "request",
                    };
                    return Err(format!(
                        "{mpath}.kind.{which}: not supported (request metadata is)"
                    ));
                }
                None => return Err(format!("{mpath}.kind: required")),
            }
            let key = m
                .metadata_key
                .as_ref()
                .ok_or_else(|| format!("{mpath}.metadata_key: required"))?;
            let path = key
                .path
                .iter()
                .map(|s| match &s.segment {
                    Some(
                        envoy_types::pb::envoy::r#type::metadata::v3::metadata_key::path_segment::Segment::Key(k),
                    ) => Ok(k.clone()),
                    _ => Err(format!("{mpath}.metadata_key.path: only keys are supported")),
                })
                .collect::<Result<_>>()?;
            TagValue::RequestMetadata {
                filter: key.key.clone(),
                path,
                default: m.default_value.clone(),
            }
        }
        Some(custom_tag::Type::Value(v)) => TagValue::Format(
            crate::telemetry::access_log::parse(v).map_err(|e| format!("{path}.value: {e}"))?,
        ),
        None => {
            return Err(format!(
                "{path}: a literal, environment, request_header or metadata is required"
            ));
        }
    };
    Ok(CustomTag {
        tag: c.tag.clone(),
        value,
    })
}
