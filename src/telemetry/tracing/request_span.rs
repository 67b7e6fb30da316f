//! A connection manager's tracing: per request, the decision, the downstream span
//! (started when the request's headers are in, named by the route's decorator,
//! finished with the response) and the tags Envoy's connection manager gives it.
use std::{net::SocketAddr, sync::Arc};

use http::{HeaderMap, HeaderName, HeaderValue, Version};

use super::{
    decision::{self, DecisionStats, X_CLIENT_TRACE_ID},
    span::{Kind, Span},
    tracer::{Tracer, Tracers},
};
use crate::{
    config::tracing::{Decorator, TagValue, TracingConfig},
    http::{dynamic_metadata::DynamicMetadata, headers::X_REQUEST_ID},
    telemetry::stats::Store,
};

pub const X_ENVOY_DECORATOR_OPERATION: HeaderName =
    HeaderName::from_static("x-envoy-decorator-operation");
const X_ENVOY_DOWNSTREAM_SERVICE_CLUSTER: HeaderName =
    HeaderName::from_static("x-envoy-downstream-service-cluster");
const X_ENVOY_ORIGINAL_PATH: HeaderName = HeaderName::from_static("x-envoy-original-path");

/// One connection manager's tracing, compiled.
#[derive(Debug)]
pub struct HttpTracing {
    config: Arc<TracingConfig>,
    stats: DecisionStats,
    tracer: Option<Arc<Tracer>>,
    /// The downstream span's kind: SERVER on ingress, and whenever upstream requests
    /// get spans of their own (`spawn_upstream_span`); CLIENT otherwise.
    kind: Kind,
    /// The listener is not INBOUND (Envoy's egress operation).
    egress: bool,
    node_id: String,
    zone: String,
}

/// What the request looked like when it arrived (after the connection manager's own
/// header changes).
pub struct RequestFacts<'a> {
    pub scheme: &'a str,
    pub authority: &'a str,
    pub path: &'a str,
    pub method: &'a str,
    pub version: Version,
    /// The connection's peer (`peer.address`).
    pub peer: SocketAddr,
    /// The request came from outside (`use_remote_address` and not internal).
    pub edge: bool,
}

/// What the request's end brings to its span.
pub struct Outcome<'a> {
    pub status: u16,
    pub flags: &'a str,
    pub received: u64,
    pub sent: u64,
    /// The cluster's name and observability name (`alt_stat_name`), when one was
    /// chosen.
    pub cluster: Option<(&'a str, &'a str)>,
    pub request_headers: Option<&'a HeaderMap>,
    pub grpc: Option<GrpcEnd<'a>>,
    pub metadata: Option<&'a DynamicMetadata>,
    /// The request as the access log has it (for `value` tags).
    pub record: Option<&'a crate::telemetry::access_log::Record>,
}

/// A gRPC response's status and message (trailers, else headers).
pub struct GrpcEnd<'a> {
    pub status: Option<u32>,
    pub message: Option<&'a str>,
}

impl HttpTracing {
    pub fn new(
        config: Arc<TracingConfig>,
        tracers: &Tracers,
        stat_prefix: &str,
        inbound: bool,
        store: &Store,
    ) -> Self {
        HttpTracing {
            tracer: tracers.get(&config.provider),
            stats: DecisionStats::new(store, stat_prefix),
            kind: if inbound || config.spawn_upstream_span {
                Kind::Server
            } else {
                Kind::Client
            },
            config,
            egress: !inbound,
            node_id: tracers.node.id.clone(),
            zone: tracers.node.zone.clone(),
        }
    }

    /// Decides whether the request is traced and starts its span, rewriting the
    /// trace headers for the upstream. No span without a tracer, or with a malformed
    /// incoming context.
    pub fn start(
        &self,
        h: &mut HeaderMap,
        r: &RequestFacts<'_>,
    ) -> (decision::Reason, Option<RequestSpan>) {
        let reason = decision::decide(h, &self.config, r.edge, &self.stats);
        (reason, self.start_span(h, r, reason))
    }

    fn start_span(
        &self,
        h: &mut HeaderMap,
        r: &RequestFacts<'_>,
        reason: decision::Reason,
    ) -> Option<RequestSpan> {
        let tracer = self.tracer.as_ref()?;
        let mut span = tracer.start(h, self.kind, reason.traced())?;
        if !span.sampled {
            // Not reported: the headers carry the context, nothing more to note.
            return Some(RequestSpan {
                span,
                tracer: tracer.clone(),
                config: self.config.clone(),
                decorated: None,
                egress: self.egress,
            });
        }
        span.name = tracer.default_name(self.egress, r.authority);
        span.tags.reserve(24);
        span.tag("node_id", self.node_id.clone());
        span.tag("zone", self.zone.clone());
        if let Some(id) = h.get(X_REQUEST_ID).and_then(|v| v.to_str().ok()) {
            span.tag("guid:x-request-id", id);
        }
        let path = h
            .get(X_ENVOY_ORIGINAL_PATH)
            .and_then(|v| v.to_str().ok())
            .unwrap_or(r.path);
        let path: String = path.chars().take(self.config.max_path_tag_length).collect();
        span.tag("http.url", format!("{}://{}{path}", r.scheme, r.authority));
        span.tag("http.method", r.method);
        span.tag(
            "downstream_cluster",
            header_or(h, &X_ENVOY_DOWNSTREAM_SERVICE_CLUSTER, "-"),
        );
        span.tag("user_agent", header_or(h, &http::header::USER_AGENT, "-"));
        span.tag(
            "http.protocol",
            match r.version {
                Version::HTTP_10 => "HTTP/1.0",
                Version::HTTP_11 => "HTTP/1.1",
                Version::HTTP_2 => "HTTP/2",
                Version::HTTP_3 => "HTTP/3",
                _ => "-",
            },
        );
        span.tag("peer.address", r.peer.ip().to_string());
        if let Some(c) = h.get(X_CLIENT_TRACE_ID).and_then(|v| v.to_str().ok()) {
            span.tag("guid:x-client-trace-id", c);
        }
        if crate::http::headers::is_grpc(h) {
            span.tag("grpc.path", r.path);
            span.tag("grpc.authority", r.authority);
            if let Some(v) = h
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
            {
                span.tag("grpc.content_type", v);
            }
            if let Some(v) = h.get("grpc-timeout").and_then(|v| v.to_str().ok()) {
                span.tag("grpc.timeout", v);
            }
        }
        Some(RequestSpan {
            span,
            tracer: tracer.clone(),
            config: self.config.clone(),
            decorated: None,
            egress: self.egress,
        })
    }
}

fn header_or(h: &HeaderMap, n: &HeaderName, default: &str) -> String {
    h.get(n)
        .and_then(|v| v.to_str().ok())
        .unwrap_or(default)
        .to_owned()
}

/// A request's span while the request is in flight.
#[derive(Debug)]
pub struct RequestSpan {
    span: Span,
    tracer: Arc<Tracer>,
    config: Arc<TracingConfig>,
    /// The decorator's operation, to be propagated (`propagate`).
    decorated: Option<HeaderValue>,
    egress: bool,
}

impl RequestSpan {
    /// Reported at its end (sampled).
    pub fn sampled(&self) -> bool {
        self.span.sampled
    }

    /// Upstream requests get spans of their own (`spawn_upstream_span`).
    pub fn spawns_upstream(&self) -> bool {
        self.config.spawn_upstream_span
    }

    /// The span of one upstream attempt to the cluster `observability_name`: a
    /// child of this one, whose context the attempt's headers now carry.
    pub fn upstream_span(
        &self,
        observability_name: &str,
        cluster: &str,
        h: &mut HeaderMap,
    ) -> UpstreamSpan {
        let span = self
            .tracer
            .child(&self.span, format!("router {observability_name} egress"), h);
        UpstreamSpan {
            span: Some(span),
            tracer: self.tracer.clone(),
            cluster: (cluster.to_owned(), observability_name.to_owned()),
        }
    }

    /// The trace id (16 bytes) and span id.
    pub fn ids(&self) -> ([u8; 16], u64) {
        (self.span.trace.bytes(), self.span.id)
    }

    /// The route is known: its decorator names the span (a span not reported needs
    /// no name).
    pub fn on_route(&mut self, decorator: Option<&Decorator>) {
        if let Some(d) = decorator {
            if self.span.sampled {
                self.span.name = d.operation.clone();
            }
            self.decorated = d.propagate.clone();
        }
    }

    /// The request goes upstream: egress passes the decorator's operation on in
    /// `x-envoy-decorator-operation`; ingress takes the caller's (and removes the
    /// header).
    pub fn on_upstream_request(&mut self, h: &mut HeaderMap) {
        match self.egress {
            true => {
                if let Some(v) = &self.decorated {
                    h.insert(X_ENVOY_DECORATOR_OPERATION, v.clone());
                }
            }
            false => {
                if let Some(v) = h.remove(X_ENVOY_DECORATOR_OPERATION)
                    && !v.is_empty()
                {
                    if self.span.sampled
                        && let Ok(s) = v.to_str()
                    {
                        self.span.name = s.to_owned();
                    }
                    self.decorated = None;
                }
            }
        }
    }

    /// The response's head: ingress tells the caller its operation; egress takes the
    /// callee's (and removes the header).
    pub fn on_response(&mut self, h: &mut HeaderMap) {
        match self.egress {
            false => {
                if let Some(v) = &self.decorated {
                    h.insert(X_ENVOY_DECORATOR_OPERATION, v.clone());
                }
            }
            true => {
                if let Some(v) = h.remove(X_ENVOY_DECORATOR_OPERATION)
                    && !v.is_empty()
                    && self.span.sampled
                    && let Ok(s) = v.to_str()
                {
                    self.span.name = s.to_owned();
                }
            }
        }
    }

    /// Ends the span with the request's outcome and hands it to the exporter.
    pub fn finish(mut self, o: &Outcome<'_>) {
        if !self.span.sampled {
            return;
        }
        let elapsed = self.span.start.elapsed().unwrap_or_default();
        self.span.duration = elapsed;
        let s = &mut self.span;
        s.tag("request_size", o.received.to_string());
        s.tag("response_size", o.sent.to_string());
        s.tag("component", "proxy");
        if let Some((name, observability)) = o.cluster {
            s.tag("upstream_cluster", name);
            s.tag("upstream_cluster.name", observability);
        }
        s.tag("http.status_code", o.status.to_string());
        s.tag(
            "response_flags",
            if o.flags.is_empty() { "-" } else { o.flags },
        );
        if o.status == 0 || o.status >= 500 {
            s.tag("error", "true");
            s.error = true;
        }
        if let Some(g) = &o.grpc {
            if let Some(code) = g.status {
                s.tag("grpc.status_code", code.to_string());
                // The codes that mean the upstream failed.
                if matches!(code, 2 | 4 | 8 | 12 | 13 | 14 | 15) {
                    s.tag("error", "true");
                    s.error = true;
                }
            }
            if let Some(m) = g.message {
                s.tag("grpc.message", m);
            }
        }
        for t in &self.config.custom_tags {
            let value = match &t.value {
                TagValue::Fixed(v) => Some(v.clone()),
                TagValue::RequestHeader { name, default } => o
                    .request_headers
                    .and_then(|h| h.get(name))
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
                    .or_else(|| Some(default.clone())),
                TagValue::RequestMetadata {
                    filter,
                    path,
                    default,
                } => o
                    .metadata
                    .and_then(|m| m.text(filter, path))
                    .or_else(|| Some(default.clone())),
                TagValue::Format(pieces) => o.record.map(|r| r.render_value(pieces)),
            };
            if let Some(v) = value.filter(|v| !v.is_empty()) {
                s.tag(t.tag.clone(), v);
            }
        }
        self.tracer.finish(self.span);
    }
}

/// The span of one upstream attempt (`spawn_upstream_span`). Finished with the
/// attempt's response; an attempt abandoned (timed out, cancelled, reset) ends when
/// dropped, with no status and `error`.
#[derive(Debug)]
pub struct UpstreamSpan {
    span: Option<Span>,
    tracer: Arc<Tracer>,
    cluster: (String, String),
}

impl UpstreamSpan {
    /// The attempt's outcome: the upstream's status (none: no response), its response
    /// flags, the host, and whether it went over HTTP/2.
    pub fn finish(
        mut self,
        status: Option<u16>,
        flags: &str,
        upstream: Option<SocketAddr>,
        h2: bool,
    ) {
        self.end(status, flags, upstream, h2);
    }

    fn end(&mut self, status: Option<u16>, flags: &str, upstream: Option<SocketAddr>, h2: bool) {
        let Some(mut s) = self.span.take() else {
            return;
        };
        if !s.sampled {
            return;
        }
        s.duration = s.start.elapsed().unwrap_or_default();
        s.tag("http.protocol", if h2 { "HTTP/2" } else { "HTTP/1.1" });
        if let Some(a) = upstream {
            s.tag("upstream_address", a.to_string());
            s.tag("peer.address", a.to_string());
        }
        s.tag("component", "proxy");
        s.tag("upstream_cluster", self.cluster.0.clone());
        s.tag("upstream_cluster.name", self.cluster.1.clone());
        let code = status.unwrap_or(0);
        s.tag("http.status_code", code.to_string());
        s.tag("response_flags", flags);
        if code == 0 || code >= 500 {
            s.tag("error", "true");
            s.error = true;
        }
        self.tracer.finish(s);
    }
}

impl Drop for UpstreamSpan {
    fn drop(&mut self) {
        self.end(None, "-", None, false);
    }
}
