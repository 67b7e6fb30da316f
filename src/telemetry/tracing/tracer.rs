//! Tracers: per provider, how spans are made and propagated (Zipkin's B3, optionally
//! with W3C; OpenTelemetry's W3C) and where they are exported. [`Tracers`] holds one
//! tracer per distinct provider configuration for the whole process, so connection
//! managers with the same provider (every listener istiod sends) share one exporter.
use std::sync::{Arc, Mutex};

use http::HeaderMap;

use super::{
    context::{self, TraceId},
    exporter::{Batching, Destination, Exporter},
    otlp,
    span::{Kind, Span},
    zipkin,
};
use crate::{
    config::tracing::{OtelExport, ProviderRef, TracingProvider},
    telemetry::stats::Store,
    upstream::ClusterManager,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Driver {
    Zipkin { wide: bool, shared: bool, w3c: bool },
    OpenTelemetry,
}

#[derive(Debug)]
pub struct Tracer {
    driver: Driver,
    exporter: Option<Exporter>,
}

impl Tracer {
    /// Starts the span of a request: its context comes from the request's headers
    /// (a child of the caller's span) or is new, and the headers are rewritten to carry
    /// this span's context upstream. `None` when the incoming B3 context is malformed
    /// (Envoy then makes no span and leaves the headers alone).
    pub fn start(&self, h: &mut HeaderMap, kind: Kind, traced: bool) -> Option<Span> {
        let mut span = Span {
            trace: TraceId {
                high: 0,
                low: 0,
                wide: false,
            },
            id: 0,
            parent: None,
            name: String::new(),
            kind,
            start: std::time::SystemTime::now(),
            duration: Default::default(),
            tags: Vec::new(),
            sampled: traced,
            shared: false,
            trace_state: String::new(),
            remote_parent: false,
            error: false,
        };
        match self.driver {
            Driver::Zipkin { wide, shared, w3c } => {
                let b3 = context::extract_b3(h).ok()?;
                let mut ids = b3.ids;
                let mut sampled = b3.sampled;
                if ids.is_none()
                    && w3c
                    && let Some(c) = context::extract_w3c(h)
                {
                    ids = Some((c.trace, c.parent));
                    sampled = sampled.or(Some(c.sampled));
                }
                span.sampled = sampled.unwrap_or(traced);
                // With a shared context, Envoy marks every server span shared.
                span.shared = shared && kind == Kind::Server;
                match ids {
                    None => {
                        // A new trace: its root span's id is the trace id's low half.
                        let low = context::random_id();
                        span.trace = TraceId {
                            high: if wide { context::random_id() } else { 0 },
                            low,
                            wide,
                        };
                        span.id = low;
                    }
                    Some((trace, parent)) => {
                        span.trace = trace;
                        if shared && kind == Kind::Server {
                            span.id = parent;
                            span.parent = b3.parent;
                        } else {
                            span.id = context::random_id();
                            span.parent = Some(parent);
                        }
                    }
                }
                context::inject_b3(h, span.trace, span.id, span.parent, span.sampled);
                if w3c {
                    context::inject_w3c(h, span.trace, span.id, span.sampled, "");
                }
            }
            Driver::OpenTelemetry => {
                match context::extract_w3c(h) {
                    Some(c) => {
                        span.trace = c.trace;
                        span.parent = Some(c.parent);
                        span.trace_state = c.state;
                        span.remote_parent = true;
                    }
                    None => {
                        span.trace = TraceId {
                            high: context::random_id(),
                            low: context::random_id(),
                            wide: true,
                        };
                    }
                }
                span.id = context::random_id();
                context::inject_w3c(h, span.trace, span.id, span.sampled, &span.trace_state);
            }
        }
        Some(span)
    }

    /// The default name of a request's span (before a route decorator renames it).
    pub fn default_name(&self, egress: bool, host: &str) -> String {
        match self.driver {
            Driver::Zipkin { .. } => host.to_owned(),
            // Envoy names ingress spans by direction alone.
            Driver::OpenTelemetry if egress => format!("egress {host}"),
            Driver::OpenTelemetry => "ingress".to_owned(),
        }
    }

    /// A CLIENT child of `parent` (an upstream attempt), its context written to `h`.
    pub fn child(&self, parent: &Span, name: String, h: &mut HeaderMap) -> Span {
        let span = Span {
            trace: parent.trace,
            id: context::random_id(),
            parent: Some(parent.id),
            name,
            kind: Kind::Client,
            start: std::time::SystemTime::now(),
            duration: Default::default(),
            tags: Vec::new(),
            sampled: parent.sampled,
            shared: false,
            trace_state: parent.trace_state.clone(),
            remote_parent: false,
            error: false,
        };
        match self.driver {
            Driver::Zipkin { w3c, .. } => {
                context::inject_b3(h, span.trace, span.id, span.parent, span.sampled);
                if w3c {
                    context::inject_w3c(h, span.trace, span.id, span.sampled, "");
                }
            }
            Driver::OpenTelemetry => {
                context::inject_w3c(h, span.trace, span.id, span.sampled, &span.trace_state);
            }
        }
        span
    }

    /// Hands a finished span to the exporter, if it is sampled.
    pub fn finish(&self, span: Span) {
        if span.sampled
            && let Some(e) = &self.exporter
        {
            e.report(span);
        }
    }
}

/// Who this proxy is, for span tags and the exporters.
#[derive(Debug, Clone, Default)]
pub struct NodeIdentity {
    pub id: String,
    pub cluster: String,
    pub zone: String,
}

/// Every tracer of the process, created on first use.
#[derive(Debug)]
pub struct Tracers {
    runtime: tokio::runtime::Handle,
    clusters: Arc<ClusterManager>,
    store: Arc<Store>,
    bootstrap: Option<TracingProvider>,
    pub node: NodeIdentity,
    zipkin_batching: Batching,
    otel_batching: Batching,
    made: Mutex<Vec<(TracingProvider, Arc<Tracer>)>>,
}

/// Spans a Zipkin tracer holds at most while the collector is slow or away.
const ZIPKIN_QUEUE: usize = 8192;

impl Tracers {
    pub fn new(
        runtime: tokio::runtime::Handle,
        clusters: Arc<ClusterManager>,
        store: Arc<Store>,
        bootstrap: Option<TracingProvider>,
        node: NodeIdentity,
        runtime_values: impl Fn(&str) -> Option<u64>,
    ) -> Self {
        let batching = |driver: &str, capacity: usize| Batching {
            min_flush_spans: runtime_values(&format!("tracing.{driver}.min_flush_spans"))
                .map_or(5, |v| v.max(1) as usize),
            flush_interval: std::time::Duration::from_millis(
                runtime_values(&format!("tracing.{driver}.flush_interval_ms"))
                    .unwrap_or(5000)
                    .max(1),
            ),
            capacity,
        };
        Tracers {
            runtime,
            clusters,
            store,
            bootstrap,
            node,
            zipkin_batching: batching("zipkin", ZIPKIN_QUEUE),
            otel_batching: batching("opentelemetry", 1024),
            made: Mutex::default(),
        }
    }

    /// The tracer of a connection manager's provider; `None` when it names the
    /// bootstrap's and the bootstrap has none (Envoy's null tracer: decisions are
    /// made and counted, no span).
    pub fn get(&self, provider: &ProviderRef) -> Option<Arc<Tracer>> {
        let p = match provider {
            ProviderRef::Own(p) => &**p,
            ProviderRef::Bootstrap => self.bootstrap.as_ref()?,
        };
        let mut made = self.made.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, t)) = made.iter().find(|(c, _)| c == p) {
            return Some(t.clone());
        }
        let tracer = Arc::new(self.make(p));
        made.push((p.clone(), tracer.clone()));
        Some(tracer)
    }

    fn make(&self, p: &TracingProvider) -> Tracer {
        match p {
            TracingProvider::Zipkin(z) => Tracer {
                driver: Driver::Zipkin {
                    wide: z.trace_id_128bit,
                    shared: z.shared_span_context,
                    w3c: z.w3c,
                },
                exporter: Some(Exporter::start(
                    Destination::Zipkin {
                        cluster: z.cluster.clone(),
                        uri: format!("http://{}{}", z.hostname, z.endpoint),
                        headers: z.headers.clone(),
                        timeout: z.timeout,
                        local: zipkin::LocalEndpoint {
                            service_name: self.node.cluster.clone(),
                            address: crate::http::forwarded::local_ip(),
                        },
                    },
                    self.zipkin_batching,
                    self.clusters.clone(),
                    &self.store,
                    &self.runtime,
                )),
            },
            TracingProvider::OpenTelemetry(o) => Tracer {
                driver: Driver::OpenTelemetry,
                exporter: (o.export != OtelExport::None).then(|| {
                    Exporter::start(
                        Destination::Otlp {
                            export: o.export.clone(),
                            resources: otlp::Resources {
                                service_name: o
                                    .service_name_attribute
                                    .then(|| o.service_name.clone()),
                                sdk: o.sdk_attributes,
                                scope: o.scope,
                            },
                        },
                        Batching {
                            capacity: o.max_cache_size,
                            ..self.otel_batching
                        },
                        self.clusters.clone(),
                        &self.store,
                        &self.runtime,
                    )
                }),
            },
        }
    }
}
