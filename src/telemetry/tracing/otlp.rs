//! OTLP trace export: the `opentelemetry.proto.collector.trace.v1` request (the
//! common messages come with the Envoy types; the trace ones are declared here, field
//! numbers as in OpenTelemetry's protos) and its encoding from finished spans.
use envoy_types::pb::opentelemetry::proto::common::v1::{
    AnyValue, InstrumentationScope, KeyValue, any_value,
};

use super::span::{Kind, Span};

/// `opentelemetry.proto.collector.trace.v1.ExportTraceServiceRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ExportTraceServiceRequest {
    #[prost(message, repeated, tag = "1")]
    pub resource_spans: Vec<ResourceSpans>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ResourceSpans {
    #[prost(message, optional, tag = "1")]
    pub resource: Option<Resource>,
    #[prost(message, repeated, tag = "2")]
    pub scope_spans: Vec<ScopeSpans>,
    #[prost(string, tag = "3")]
    pub schema_url: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Resource {
    #[prost(message, repeated, tag = "1")]
    pub attributes: Vec<KeyValue>,
    #[prost(uint32, tag = "2")]
    pub dropped_attributes_count: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ScopeSpans {
    #[prost(message, optional, tag = "1")]
    pub scope: Option<InstrumentationScope>,
    #[prost(message, repeated, tag = "2")]
    pub spans: Vec<OtlpSpan>,
    #[prost(string, tag = "3")]
    pub schema_url: String,
}

/// `opentelemetry.proto.trace.v1.Span`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct OtlpSpan {
    #[prost(bytes = "vec", tag = "1")]
    pub trace_id: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    pub span_id: Vec<u8>,
    #[prost(string, tag = "3")]
    pub trace_state: String,
    #[prost(bytes = "vec", tag = "4")]
    pub parent_span_id: Vec<u8>,
    #[prost(string, tag = "5")]
    pub name: String,
    /// `SpanKind`: 2 server, 3 client.
    #[prost(int32, tag = "6")]
    pub kind: i32,
    #[prost(fixed64, tag = "7")]
    pub start_time_unix_nano: u64,
    #[prost(fixed64, tag = "8")]
    pub end_time_unix_nano: u64,
    #[prost(message, repeated, tag = "9")]
    pub attributes: Vec<KeyValue>,
    #[prost(message, optional, tag = "15")]
    pub status: Option<Status>,
    /// Bit 0: sampled; bit 8: the parent's remoteness is known; bit 9: it is remote.
    #[prost(fixed32, tag = "16")]
    pub flags: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Status {
    #[prost(string, tag = "2")]
    pub message: String,
    /// `StatusCode`: 0 unset, 1 ok, 2 error.
    #[prost(int32, tag = "3")]
    pub code: i32,
}

/// The gRPC method OTLP exports go to.
pub const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// What goes in every export besides the spans.
#[derive(Debug, Clone)]
pub struct Resources {
    pub service_name: Option<String>,
    /// `telemetry.sdk.*` attributes and the scope's version.
    pub sdk: bool,
    pub scope: bool,
}

pub fn string_kv(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.to_owned())),
        }),
        ..Default::default()
    }
}

fn version() -> String {
    format!("pilotfish/{}", env!("CARGO_PKG_VERSION"))
}

/// One export request for a batch of spans.
pub fn request(spans: &[Span], r: &Resources) -> ExportTraceServiceRequest {
    let mut attributes = Vec::new();
    if r.sdk {
        attributes.push(string_kv("telemetry.sdk.version", &version()));
        attributes.push(string_kv("telemetry.sdk.name", "pilotfish"));
        attributes.push(string_kv("telemetry.sdk.language", "rust"));
    }
    if let Some(s) = &r.service_name {
        attributes.push(string_kv("service.name", s));
    }
    let scope = r.scope.then(|| InstrumentationScope {
        name: "envoy".into(),
        version: version(),
        ..Default::default()
    });
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes,
                dropped_attributes_count: 0,
            }),
            scope_spans: vec![ScopeSpans {
                scope,
                spans: spans.iter().map(span).collect(),
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    }
}

fn nanos(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn span(s: &Span) -> OtlpSpan {
    let mut flags = 0x100 | u32::from(s.sampled);
    if s.remote_parent {
        flags |= 0x200;
    }
    OtlpSpan {
        trace_id: s.trace.bytes().to_vec(),
        span_id: s.id.to_be_bytes().to_vec(),
        trace_state: s.trace_state.clone(),
        parent_span_id: s
            .parent
            .map(|p| p.to_be_bytes().to_vec())
            .unwrap_or_default(),
        name: s.name.clone(),
        kind: match s.kind {
            Kind::Server => 2,
            Kind::Client => 3,
        },
        start_time_unix_nano: nanos(s.start),
        end_time_unix_nano: nanos(s.start + s.duration),
        attributes: s.tags.iter().map(|(k, v)| string_kv(k, v)).collect(),
        status: s.error.then(|| Status {
            message: String::new(),
            code: 2,
        }),
        flags,
    }
}
