//! The bootstrap's `stats_sinks` and how often they are flushed
//! (`stats_flush_interval`, `stats_flush_on_admin`).
use std::{collections::HashSet, net::SocketAddr, time::Duration};

use envoy_types::pb::envoy::config::{
    bootstrap::v3::{Bootstrap, bootstrap::StatsFlush},
    core::v3::ApiVersion,
    metrics::v3::{HistogramEmitMode, MetricsServiceConfig, StatsdSink, stats_sink, statsd_sink},
};

use super::proto;

type Result<T> = std::result::Result<T, String>;

const STATSD: &str = "envoy.config.metrics.v3.StatsdSink";
const METRICS_SERVICE: &str = "envoy.config.metrics.v3.MetricsServiceConfig";

/// Envoy's default `stats_flush_interval`.
const DEFAULT_FLUSH: Duration = Duration::from_secs(5);

/// What the sinks are and when they flush.
#[derive(Debug, Clone, Default)]
pub struct StatSinksConfig {
    pub flush: Flush,
    pub sinks: Vec<SinkConfig>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flush {
    /// Every interval, measured from the end of the previous flush.
    Every(Duration),
    /// When an admin `/stats` request comes in (no timer).
    OnAdmin,
}

impl Default for Flush {
    fn default() -> Self {
        Flush::Every(DEFAULT_FLUSH)
    }
}

#[derive(Debug, Clone)]
pub enum SinkConfig {
    Statsd(StatsdConfig),
    MetricsService(MetricsServiceSinkConfig),
}

#[derive(Debug, Clone)]
pub struct StatsdConfig {
    pub target: StatsdTarget,
    /// Put before every name with a `.` (default `envoy`).
    pub prefix: String,
}

#[derive(Debug, Clone)]
pub enum StatsdTarget {
    /// One datagram per line.
    Udp(SocketAddr),
    /// Newline-separated lines over a connection to one of the cluster's hosts.
    Tcp(String),
}

#[derive(Debug, Clone)]
pub struct MetricsServiceSinkConfig {
    pub cluster: String,
    pub authority: String,
    pub metadata: Vec<(http::HeaderName, http::HeaderValue)>,
    /// `report_counters_as_deltas`: the increase since the last flush instead of the
    /// total.
    pub counter_deltas: bool,
    pub summaries: bool,
    pub histograms: bool,
    /// `batch_size`: at most this many metric families per message (0: all in one).
    pub batch_size: usize,
}

/// `stats_sinks` and the flush settings; sinks that name a cluster need one of
/// `static_clusters` (Envoy checks at start that it exists).
pub fn compile(b: &Bootstrap, static_clusters: &HashSet<&str>) -> Result<StatSinksConfig> {
    let mut out = StatSinksConfig {
        flush: match &b.stats_flush {
            Some(StatsFlush::StatsFlushOnAdmin(true)) => {
                if b.stats_flush_interval.is_some() {
                    return Err(
                        "stats_flush_on_admin: only one of stats_flush_on_admin and \
                                stats_flush_interval may be set"
                            .into(),
                    );
                }
                Flush::OnAdmin
            }
            _ => Flush::default(),
        },
        sinks: Vec::new(),
    };
    if let Some(d) = &b.stats_flush_interval {
        let d = super::compile::duration(d);
        if d < Duration::from_millis(1) || d >= Duration::from_secs(300) {
            return Err(format!(
                "stats_flush_interval: {d:?} is outside [1ms, 300s) (as in Envoy)"
            ));
        }
        out.flush = Flush::Every(d);
    }
    for (i, s) in b.stats_sinks.iter().enumerate() {
        let path = format!("stats_sinks[{i}]");
        let any = match &s.config_type {
            Some(stats_sink::ConfigType::TypedConfig(a)) => a,
            None => return Err(format!("{path} ({}): typed_config is required", s.name)),
        };
        let tpath = format!("{path}.typed_config");
        let sink = match proto::type_name(&any.type_url) {
            STATSD => {
                let c: StatsdSink = proto::unpack(any).map_err(|e| format!("{tpath}: {e}"))?;
                SinkConfig::Statsd(statsd(&c, &tpath, static_clusters)?)
            }
            METRICS_SERVICE => {
                let c: MetricsServiceConfig =
                    proto::unpack(any).map_err(|e| format!("{tpath}: {e}"))?;
                SinkConfig::MetricsService(metrics_service(&c, &tpath, static_clusters)?)
            }
            other => {
                return Err(format!(
                    "{path} ({}): sink type '{other}' is not supported (statsd and \
                     metrics_service are)",
                    s.name
                ));
            }
        };
        out.sinks.push(sink);
    }
    Ok(out)
}

fn statsd(c: &StatsdSink, path: &str, clusters: &HashSet<&str>) -> Result<StatsdConfig> {
    let target = match &c.statsd_specifier {
        Some(statsd_sink::StatsdSpecifier::Address(a)) => {
            StatsdTarget::Udp(super::compile::socket_addr(a, &format!("{path}.address"))?)
        }
        Some(statsd_sink::StatsdSpecifier::TcpClusterName(n)) => {
            if !clusters.contains(n.as_str()) {
                return Err(format!(
                    "{path}.tcp_cluster_name: unknown cluster '{n}' (it must be a static \
                     cluster)"
                ));
            }
            StatsdTarget::Tcp(n.clone())
        }
        None => return Err(format!("{path}: address or tcp_cluster_name is required")),
    };
    Ok(StatsdConfig {
        target,
        prefix: if c.prefix.is_empty() {
            "envoy".into()
        } else {
            c.prefix.clone()
        },
    })
}

fn metrics_service(
    c: &MetricsServiceConfig,
    path: &str,
    clusters: &HashSet<&str>,
) -> Result<MetricsServiceSinkConfig> {
    #[allow(deprecated)] // V2 is named only to be refused.
    let v2 = ApiVersion::V2 as i32;
    if c.transport_api_version == v2 {
        return Err(format!(
            "{path}.transport_api_version: V2 is not supported (V3 is)"
        ));
    }
    let g = c
        .grpc_service
        .as_ref()
        .ok_or_else(|| format!("{path}.grpc_service: required"))?;
    let target =
        super::http_filters::envoy_grpc(g, &format!("{path}.grpc_service"), DEFAULT_FLUSH)?;
    if !clusters.contains(target.cluster.as_str()) {
        return Err(format!(
            "{path}.grpc_service.envoy_grpc.cluster_name: unknown cluster '{}' (it must be a \
             static cluster)",
            target.cluster
        ));
    }
    let mode = HistogramEmitMode::try_from(c.histogram_emit_mode)
        .map_err(|_| format!("{path}.histogram_emit_mode: unknown value"))?;
    Ok(MetricsServiceSinkConfig {
        cluster: target.cluster,
        authority: target.authority,
        metadata: target.metadata,
        counter_deltas: c.report_counters_as_deltas.is_some_and(|b| b.value),
        summaries: mode != HistogramEmitMode::Histogram,
        histograms: mode != HistogramEmitMode::Summary,
        batch_size: c.batch_size as usize,
    })
}
