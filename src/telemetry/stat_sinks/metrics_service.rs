//! `envoy.stat_sinks.metrics_service`: each flush is a `StreamMetricsMessage` on one
//! long-lived client-streaming `envoy.service.metrics.v3.MetricsService/StreamMetrics`
//! call through the named cluster, as Envoy streams it: one `MetricFamily` per stat
//! with its flat name, the node only in a stream's first message, and a new stream at
//! the next flush once the previous one ends (that flush's data is lost, as in Envoy).
use std::{sync::Arc, time::UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};
use envoy_types::pb::{
    envoy::{
        config::core::v3::Node,
        service::metrics::v3::{StreamMetricsMessage, stream_metrics_message::Identifier},
    },
    io::prometheus::client as prom,
};
use http::{Request, header};
use http_body_util::BodyExt;
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::{StreamExt, wrappers::ReceiverStream};

use super::{HistogramInterval, Snapshot};
use crate::{config::stat_sinks::MetricsServiceSinkConfig, upstream::manager::ClusterManager};

const METHOD: &str = "/envoy.service.metrics.v3.MetricsService/StreamMetrics";

/// The quantiles Envoy's summaries carry.
const QUANTILES: [f64; 10] = [0.0, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999, 1.0];

/// Messages a stream may have queued before a flush's data is dropped instead.
const QUEUED: usize = 16;

pub struct MetricsService {
    config: MetricsServiceSinkConfig,
    clusters: Arc<ClusterManager>,
    node: Node,
    stream: Option<mpsc::Sender<Bytes>>,
}

impl MetricsService {
    pub fn new(
        config: MetricsServiceSinkConfig,
        clusters: Arc<ClusterManager>,
        node: Node,
    ) -> Self {
        MetricsService {
            config,
            clusters,
            node,
            stream: None,
        }
    }

    pub fn flush(&mut self, snap: &Snapshot) {
        let families = families(&self.config, snap);
        let size = match self.config.batch_size {
            0 => families.len().max(1),
            n => n,
        };
        let mut opened = false;
        for batch in families.chunks(size) {
            if self.stream.as_ref().is_none_or(|s| s.is_closed()) {
                self.stream = self.open();
                opened = true;
            }
            let Some(stream) = &self.stream else { return };
            let msg = StreamMetricsMessage {
                identifier: std::mem::take(&mut opened).then(|| Identifier {
                    node: Some(self.node.clone()),
                }),
                envoy_metrics: batch.to_vec(),
            };
            let mut frame = BytesMut::with_capacity(msg.encoded_len() + 5);
            frame.put_u8(0);
            frame.put_u32(msg.encoded_len() as u32);
            if msg.encode(&mut frame).is_err() {
                return;
            }
            match stream.try_send(frame.freeze()) {
                Ok(()) => {}
                // A server that does not keep up loses this flush, not the stream.
                Err(mpsc::error::TrySendError::Full(_)) => return,
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    self.stream = None;
                    return;
                }
            }
        }
    }

    /// Starts a call on one of the cluster's hosts; its request body is what the
    /// returned sender sends. None when the cluster has no host to call.
    fn open(&self) -> Option<mpsc::Sender<Bytes>> {
        let Some(cluster) = self.clusters.get(&self.config.cluster) else {
            tracing::debug!("metrics service: no cluster '{}'", self.config.cluster);
            return None;
        };
        let Some(host) = cluster.pick(None) else {
            tracing::debug!(
                "metrics service: unable to establish a stream to '{}', will retry in the \
                 next flush",
                self.config.cluster
            );
            return None;
        };
        let (tx, rx) = mpsc::channel::<Bytes>(QUEUED);
        let body = http_body_util::StreamBody::new(
            ReceiverStream::new(rx)
                .map(|b| Ok::<_, crate::http::body::BoxError>(http_body::Frame::data(b))),
        );
        let mut req = Request::post(format!("http://{}{METHOD}", self.config.authority))
            .header(header::CONTENT_TYPE, "application/grpc")
            .header(header::TE, "trailers");
        for (k, v) in &self.config.metadata {
            req = req.header(k, v);
        }
        let req = req.body(crate::http::body::boxed(body)).ok()?;
        tokio::spawn(async move {
            match crate::upstream::http_pool::send(&cluster, &host, req, true).await {
                Ok(resp) => {
                    cluster.stats.upstream_rq.record(resp.status().as_u16());
                    let _ = resp.into_body().collect().await;
                }
                Err(_) => tracing::debug!("metrics service: the stream failed"),
            }
        });
        Some(tx)
    }
}

/// One family per stat, counters then gauges then histograms, as Envoy orders them.
fn families(c: &MetricsServiceSinkConfig, snap: &Snapshot) -> Vec<prom::MetricFamily> {
    let ts = snap
        .time
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_millis() as i64);
    let family = |name: &str, kind: prom::MetricType, m: prom::Metric| prom::MetricFamily {
        name: Some(name.to_owned()),
        r#type: Some(kind as i32),
        metric: vec![prom::Metric {
            timestamp_ms: ts,
            ..m
        }],
        ..Default::default()
    };
    let mut out = Vec::with_capacity(snap.counters.len() + snap.gauges.len());
    for (name, total, delta) in &snap.counters {
        let value = if c.counter_deltas { *delta } else { *total };
        out.push(family(
            name,
            prom::MetricType::Counter,
            prom::Metric {
                counter: Some(prom::Counter {
                    value: Some(value as f64),
                    ..Default::default()
                }),
                ..Default::default()
            },
        ));
    }
    for (name, v) in &snap.gauges {
        out.push(family(
            name,
            prom::MetricType::Gauge,
            prom::Metric {
                gauge: Some(prom::Gauge {
                    value: Some(*v as f64),
                }),
                ..Default::default()
            },
        ));
    }
    for h in &snap.histograms {
        if c.summaries {
            out.push(family(
                &h.name,
                prom::MetricType::Summary,
                prom::Metric {
                    summary: Some(summary(h)),
                    ..Default::default()
                },
            ));
        }
        if c.histograms {
            out.push(family(
                &h.name,
                prom::MetricType::Histogram,
                prom::Metric {
                    histogram: Some(histogram(h)),
                    ..Default::default()
                },
            ));
        }
    }
    out
}

fn summary(h: &HistogramInterval) -> prom::Summary {
    prom::Summary {
        sample_count: Some(h.count()),
        sample_sum: Some(h.sum),
        quantile: QUANTILES
            .iter()
            .map(|&q| prom::Quantile {
                quantile: Some(q),
                value: Some(quantile(h, q)),
            })
            .collect(),
        ..Default::default()
    }
}

/// Cumulative counts per bound, without a `+Inf` bucket (as Envoy sends them).
fn histogram(h: &HistogramInterval) -> prom::Histogram {
    let mut total = 0;
    prom::Histogram {
        sample_count: Some(h.count()),
        sample_sum: Some(h.sum),
        bucket: h
            .bounds
            .iter()
            .zip(&h.counts)
            .map(|(&bound, &n)| {
                total += n;
                prom::Bucket {
                    cumulative_count: Some(total),
                    upper_bound: Some(bound),
                    ..Default::default()
                }
            })
            .collect(),
        ..Default::default()
    }
}

/// The `q` quantile of the interval's values, interpolated within the bucket it falls
/// in (Envoy's own histograms are finer; these are as fine as the bucket bounds). NaN
/// for an interval without values, as Envoy reports it.
fn quantile(h: &HistogramInterval, q: f64) -> f64 {
    let count = h.count();
    if count == 0 {
        return f64::NAN;
    }
    let rank = q * count as f64;
    let mut below = 0u64;
    for (i, &n) in h.counts.iter().enumerate() {
        if n == 0 {
            continue;
        }
        let lo = if i == 0 { 0.0 } else { h.bounds[i - 1] };
        let hi = h.bounds.get(i).copied().unwrap_or(lo);
        if (below + n) as f64 >= rank {
            let within = ((rank - below as f64) / n as f64).clamp(0.0, 1.0);
            return lo + (hi - lo) * within;
        }
        below += n;
    }
    h.bounds.last().copied().unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn interval(counts: Vec<u64>) -> HistogramInterval {
        HistogramInterval {
            name: "h".into(),
            bounds: vec![1.0, 5.0, 10.0].into(),
            counts,
            sum: 0.0,
        }
    }

    #[test]
    fn quantiles_fall_in_their_bucket() {
        let h = interval(vec![0, 4, 0, 0]);
        assert_eq!(quantile(&h, 0.0), 1.0);
        assert_eq!(quantile(&h, 0.5), 3.0);
        assert_eq!(quantile(&h, 1.0), 5.0);
        // Values above every bound read as the last bound.
        let h = interval(vec![1, 0, 0, 1]);
        assert_eq!(quantile(&h, 1.0), 10.0);
        assert_eq!(quantile(&h, 0.0), 0.0);
        assert!(quantile(&interval(vec![0, 0, 0, 0]), 0.5).is_nan());
    }

    #[test]
    fn histogram_buckets_are_cumulative_without_inf() {
        let h = histogram(&interval(vec![1, 2, 0, 5]));
        let b: Vec<(f64, u64)> = h
            .bucket
            .iter()
            .map(|b| (b.upper_bound.unwrap(), b.cumulative_count.unwrap()))
            .collect();
        assert_eq!(b, vec![(1.0, 1), (5.0, 3), (10.0, 3)]);
        assert_eq!(h.sample_count, Some(8));
    }
}
