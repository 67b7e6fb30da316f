//! `envoy.access_loggers.open_telemetry`: access-log records as OTLP log records
//! (`opentelemetry.proto.collector.logs.v1.LogsService/Export` over gRPC), with the
//! body and attributes formatted like access-log lines, the resource labelled as
//! Envoy labels it, and the request's trace and span ids. Records queue (bounded,
//! never waiting) for a task on the control thread that exports them every
//! `buffer_flush_interval` (1 s) or when `buffer_size_bytes` (16 KiB) have gathered.
use std::{sync::Arc, time::Duration};

use envoy_types::pb::opentelemetry::proto::common::v1::{AnyValue, KeyValue, any_value};
use http::{HeaderName, HeaderValue};
use prost::Message;
use tokio::sync::mpsc;

use super::{
    access_log::{Piece, Record},
    stats::{Counter, Store},
    tracing::otlp::{Resource, string_kv},
};
use crate::upstream::ClusterManager;

/// The gRPC method log exports go to.
pub const EXPORT_PATH: &str = "/opentelemetry.proto.collector.logs.v1.LogsService/Export";

/// `opentelemetry.proto.collector.logs.v1.ExportLogsServiceRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ExportLogsServiceRequest {
    #[prost(message, repeated, tag = "1")]
    pub resource_logs: Vec<ResourceLogs>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ResourceLogs {
    #[prost(message, optional, tag = "1")]
    pub resource: Option<Resource>,
    #[prost(message, repeated, tag = "2")]
    pub scope_logs: Vec<ScopeLogs>,
    #[prost(string, tag = "3")]
    pub schema_url: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ScopeLogs {
    #[prost(message, repeated, tag = "2")]
    pub log_records: Vec<LogRecord>,
    #[prost(string, tag = "3")]
    pub schema_url: String,
}

/// `opentelemetry.proto.logs.v1.LogRecord`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LogRecord {
    #[prost(fixed64, tag = "1")]
    pub time_unix_nano: u64,
    #[prost(message, optional, tag = "5")]
    pub body: Option<AnyValue>,
    #[prost(message, repeated, tag = "6")]
    pub attributes: Vec<KeyValue>,
    #[prost(bytes = "vec", tag = "9")]
    pub trace_id: Vec<u8>,
    #[prost(bytes = "vec", tag = "10")]
    pub span_id: Vec<u8>,
}

/// A compiled `OpenTelemetryAccessLogConfig`.
#[derive(Debug, Clone, PartialEq)]
pub struct OtelLogConfig {
    pub cluster: String,
    pub authority: String,
    pub timeout: Duration,
    pub metadata: Vec<(HeaderName, HeaderValue)>,
    /// `body.string_value`, formatted.
    pub body: Option<Vec<Piece>>,
    /// `attributes`: string values, formatted.
    pub attributes: Vec<(String, Vec<Piece>)>,
    pub log_name: String,
    /// `disable_builtin_labels`: the resource has no `log_name`, `zone_name`,
    /// `cluster_name`, `node_name`.
    pub builtin_labels: bool,
    /// `resource_attributes` (string values).
    pub resource: Vec<(String, String)>,
    pub flush_interval: Duration,
    pub buffer_size: usize,
}

/// Records a full queue turns away.
const QUEUE: usize = 16_384;

/// The handle access logs write through.
#[derive(Debug)]
pub struct OtelLogger {
    config: Arc<OtelLogConfig>,
    tx: mpsc::Sender<LogRecord>,
    dropped: Counter,
}

impl OtelLogger {
    /// `node`: the node's id, cluster and zone (the built-in labels).
    pub fn start(
        config: Arc<OtelLogConfig>,
        clusters: Arc<ClusterManager>,
        node: &crate::telemetry::tracing::NodeIdentity,
        store: &Store,
        runtime: &tokio::runtime::Handle,
        dropped: Counter,
    ) -> Self {
        let mut resource = Vec::new();
        if config.builtin_labels {
            resource.push(string_kv("log_name", &config.log_name));
            resource.push(string_kv("zone_name", &node.zone));
            resource.push(string_kv("cluster_name", &node.cluster));
            resource.push(string_kv("node_name", &node.id));
        }
        for (k, v) in &config.resource {
            match resource.iter_mut().find(|kv| &kv.key == k) {
                Some(kv) => *kv = string_kv(k, v),
                None => resource.push(string_kv(k, v)),
            }
        }
        let (tx, rx) = mpsc::channel(QUEUE);
        let stats = Stats {
            written: store.counter(
                "access_logs.open_telemetry_access_log.logs_written".into(),
                "envoy_access_logs_open_telemetry_access_log_logs_written",
                &[],
            ),
            failed: store.counter(
                "pilotfish.access_log.open_telemetry.exports_failed".into(),
                "pilotfish_access_log_open_telemetry_exports_failed",
                &[],
            ),
        };
        runtime.spawn(run(rx, config.clone(), resource, clusters, stats));
        OtelLogger {
            config,
            tx,
            dropped,
        }
    }

    pub fn config(&self) -> &OtelLogConfig {
        &self.config
    }

    pub fn write(&self, r: &Record) {
        let text = |v: String| AnyValue {
            value: Some(any_value::Value::StringValue(v)),
        };
        let record = LogRecord {
            time_unix_nano: r
                .start
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos() as u64),
            body: self.config.body.as_ref().map(|b| text(r.render_text(b))),
            attributes: self
                .config
                .attributes
                .iter()
                .map(|(k, v)| KeyValue {
                    key: k.clone(),
                    value: Some(text(r.render_text(v))),
                    ..Default::default()
                })
                .collect(),
            trace_id: r.trace_context.map(|t| t.0.to_vec()).unwrap_or_default(),
            span_id: r
                .trace_context
                .map(|t| t.1.to_be_bytes().to_vec())
                .unwrap_or_default(),
        };
        if self.tx.try_send(record).is_err() {
            self.dropped.inc();
        }
    }
}

#[derive(Debug)]
struct Stats {
    written: Counter,
    failed: Counter,
}

async fn run(
    mut rx: mpsc::Receiver<LogRecord>,
    config: Arc<OtelLogConfig>,
    resource: Vec<KeyValue>,
    clusters: Arc<ClusterManager>,
    stats: Stats,
) {
    let mut batch = Vec::new();
    let mut size = 0;
    let mut tick = tokio::time::interval_at(
        tokio::time::Instant::now() + config.flush_interval,
        config.flush_interval,
    );
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            r = rx.recv() => {
                let Some(r) = r else { break };
                size += r.encoded_len();
                batch.push(r);
                if size >= config.buffer_size {
                    export(std::mem::take(&mut batch), &config, &resource, &clusters, &stats).await;
                    size = 0;
                }
            }
            _ = tick.tick() => {
                if !batch.is_empty() {
                    export(std::mem::take(&mut batch), &config, &resource, &clusters, &stats).await;
                    size = 0;
                }
            }
        }
    }
}

async fn export(
    records: Vec<LogRecord>,
    config: &OtelLogConfig,
    resource: &[KeyValue],
    clusters: &ClusterManager,
    stats: &Stats,
) {
    let n = records.len() as u64;
    let msg = ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(Resource {
                attributes: resource.to_vec(),
                dropped_attributes_count: 0,
            }),
            scope_logs: vec![ScopeLogs {
                log_records: records,
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    };
    let snapshot = clusters.snapshot();
    match crate::upstream::side_call::grpc_unary(
        &snapshot,
        &config.cluster,
        &config.authority,
        EXPORT_PATH,
        &msg,
        config.timeout,
        &config.metadata,
        None,
    )
    .await
    {
        Ok(true) => stats.written.add(n),
        _ => stats.failed.inc(),
    }
}
