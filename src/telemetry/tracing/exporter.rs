//! Sends finished spans to the collector, off the traffic path: requests hand spans to
//! a bounded queue (never waiting; a full queue drops and counts), and one task on the
//! control runtime batches them and posts a batch when it has `min_flush_spans`
//! (Envoy's 5) or when the flush interval (5 s) ticks.
use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, header};
use prost::Message;
use tokio::sync::mpsc;

use super::{otlp, span::Span, zipkin};
use crate::{
    config::tracing::OtelExport,
    http::body,
    telemetry::stats::{Counter, Store},
    upstream::{
        ClusterManager,
        side_call::{self, CallError},
    },
};

/// Where and how a batch goes.
#[derive(Debug, Clone)]
pub enum Destination {
    Zipkin {
        cluster: String,
        /// `http://{hostname}{endpoint}`.
        uri: String,
        headers: Vec<(HeaderName, HeaderValue)>,
        timeout: Duration,
        local: zipkin::LocalEndpoint,
    },
    Otlp {
        export: OtelExport,
        resources: otlp::Resources,
    },
}

/// Envoy's counters for a tracer, under `tracing.<driver>.`.
#[derive(Debug, Clone)]
struct ExportStats {
    spans_sent: Counter,
    timer_flushed: Counter,
    reports_sent: Counter,
    reports_dropped: Counter,
    reports_failed: Counter,
    reports_skipped_no_cluster: Counter,
    /// Spans the full queue turned away (pilotfish's own).
    spans_dropped: Counter,
}

impl ExportStats {
    fn new(store: &Store, driver: &str) -> Self {
        let c = |name: &str| {
            store.counter(
                format!("tracing.{driver}.{name}"),
                &format!("envoy_tracing_{driver}_{name}"),
                &[],
            )
        };
        ExportStats {
            spans_sent: c("spans_sent"),
            timer_flushed: c("timer_flushed"),
            reports_sent: c("reports_sent"),
            reports_dropped: c("reports_dropped"),
            reports_failed: c("reports_failed"),
            reports_skipped_no_cluster: c("reports_skipped_no_cluster"),
            spans_dropped: store.counter(
                format!("pilotfish.tracing.{driver}.spans_dropped"),
                &format!("pilotfish_tracing_{driver}_spans_dropped"),
                &[],
            ),
        }
    }
}

/// Batching settings (Envoy's runtime `tracing.<driver>.min_flush_spans` and
/// `tracing.<driver>.flush_interval_ms`).
#[derive(Debug, Clone, Copy)]
pub struct Batching {
    pub min_flush_spans: usize,
    pub flush_interval: Duration,
    /// Spans waiting (queued or batched) beyond which new ones are dropped.
    pub capacity: usize,
}

/// The handle requests report spans through.
#[derive(Debug)]
pub struct Exporter {
    tx: mpsc::Sender<Span>,
    dropped: Counter,
}

impl Exporter {
    /// Starts the export task on `runtime`.
    pub fn start(
        destination: Destination,
        batching: Batching,
        clusters: Arc<ClusterManager>,
        store: &Store,
        runtime: &tokio::runtime::Handle,
    ) -> Self {
        let driver = match destination {
            Destination::Zipkin { .. } => "zipkin",
            Destination::Otlp { .. } => "opentelemetry",
        };
        let stats = ExportStats::new(store, driver);
        let (tx, rx) = mpsc::channel(batching.capacity.max(1));
        let dropped = stats.spans_dropped.clone();
        runtime.spawn(run(rx, destination, batching, clusters, stats));
        Exporter { tx, dropped }
    }

    /// Queues a finished span; never waits.
    pub fn report(&self, span: Span) {
        if self.tx.try_send(span).is_err() {
            self.dropped.inc();
        }
    }
}

async fn run(
    mut rx: mpsc::Receiver<Span>,
    destination: Destination,
    batching: Batching,
    clusters: Arc<ClusterManager>,
    stats: ExportStats,
) {
    let mut batch: Vec<Span> = Vec::new();
    let mut tick = tokio::time::interval_at(
        tokio::time::Instant::now() + batching.flush_interval,
        batching.flush_interval,
    );
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            span = rx.recv() => {
                let Some(span) = span else { break };
                batch.push(span);
                if batch.len() >= batching.min_flush_spans {
                    flush(&mut batch, &destination, &clusters, &stats).await;
                }
            }
            _ = tick.tick() => {
                stats.timer_flushed.inc();
                if !batch.is_empty() {
                    flush(&mut batch, &destination, &clusters, &stats).await;
                }
            }
        }
    }
    if !batch.is_empty() {
        flush(&mut batch, &destination, &clusters, &stats).await;
    }
}

async fn flush(
    batch: &mut Vec<Span>,
    destination: &Destination,
    clusters: &ClusterManager,
    stats: &ExportStats,
) {
    let spans = std::mem::take(batch);
    let clusters = clusters.snapshot();
    let (cluster, req, h2, timeout) = match destination {
        Destination::Zipkin {
            cluster,
            uri,
            headers,
            timeout,
            local,
        } => {
            let mut b =
                Request::post(uri.as_str()).header(header::CONTENT_TYPE, "application/json");
            for (k, v) in headers {
                b = b.header(k, v);
            }
            let Ok(req) = b.body(body::full(Bytes::from(zipkin::encode(&spans, local)))) else {
                return;
            };
            (cluster.as_str(), req, false, *timeout)
        }
        Destination::Otlp { export, resources } => {
            let msg = otlp::request(&spans, resources);
            match export {
                OtelExport::None => return,
                OtelExport::Grpc {
                    cluster,
                    authority,
                    timeout,
                    metadata,
                } => {
                    stats.spans_sent.add(spans.len() as u64);
                    let sent = side_call::grpc_unary(
                        &clusters,
                        cluster,
                        authority,
                        otlp::EXPORT_PATH,
                        &msg,
                        *timeout,
                        metadata,
                        Some(&user_agent()),
                    )
                    .await;
                    count(sent.map(|ok| ok.then_some(())), stats);
                    return;
                }
                OtelExport::Http {
                    cluster,
                    authority,
                    path,
                    timeout,
                    headers,
                } => {
                    let mut b = Request::post(format!("http://{authority}{path}"))
                        .header(header::CONTENT_TYPE, "application/x-protobuf")
                        .header(header::USER_AGENT, user_agent());
                    for (k, v) in headers {
                        b = b.header(k, v);
                    }
                    let Ok(req) = b.body(body::full(Bytes::from(msg.encode_to_vec()))) else {
                        return;
                    };
                    (cluster.as_str(), req, false, *timeout)
                }
            }
        }
    };
    stats.spans_sent.add(spans.len() as u64);
    let sent = side_call::call(&clusters, cluster, req, h2, timeout).await;
    // Zipkin's collector answers 202; any other status drops the report.
    count(
        sent.map(|(head, _, _)| {
            let ok = if matches!(destination, Destination::Zipkin { .. }) {
                head.status == http::StatusCode::ACCEPTED
            } else {
                head.status.is_success()
            };
            ok.then_some(())
        }),
        stats,
    );
}

/// Counts a report: sent, dropped (the collector refused it), failed, or skipped.
fn count(outcome: Result<Option<()>, CallError>, stats: &ExportStats) {
    match outcome {
        Err(CallError::NoCluster) => stats.reports_skipped_no_cluster.inc(),
        Err(CallError::Failed) => stats.reports_failed.inc(),
        Ok(Some(())) => stats.reports_sent.inc(),
        Ok(None) => stats.reports_dropped.inc(),
    }
}

fn user_agent() -> String {
    format!("OTel-OTLP-Exporter-pilotfish/{}", env!("CARGO_PKG_VERSION"))
}
