//! The bootstrap's `stats_sinks`: every flush interval (or on each admin `/stats`
//! request with `stats_flush_on_admin`) a snapshot of the used stats goes to each
//! sink, as Envoy's server flushes them. Counters are latched once per flush, so each
//! sink sees the same delta; histograms report what was recorded since the last flush.
//! Runs on the control runtime, off the traffic path; without sinks nothing runs.
mod metrics_service;
mod statsd;

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, SystemTime},
};

use tokio::sync::Notify;

use super::stats::{Sinked, Store};
use crate::{
    config::stat_sinks::{Flush, SinkConfig, StatSinksConfig},
    upstream::manager::ClusterManager,
};

/// What one flush hands to every sink.
#[derive(Debug, Default, PartialEq)]
pub struct Snapshot {
    /// Wall-clock time of the snapshot.
    pub time: Option<SystemTime>,
    /// Name, total, increase since the previous flush.
    pub counters: Vec<(Arc<str>, u64, u64)>,
    pub gauges: Vec<(Arc<str>, i64)>,
    pub histograms: Vec<HistogramInterval>,
}

/// A histogram's values recorded since the previous flush.
#[derive(Debug, PartialEq)]
pub struct HistogramInterval {
    pub name: Arc<str>,
    pub bounds: Arc<[f64]>,
    /// Per bucket (not cumulative), one more than `bounds` (values above them all).
    pub counts: Vec<u64>,
    pub sum: f64,
}

impl HistogramInterval {
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }
}

/// What the previous flush saw of each stat.
#[derive(Debug)]
enum Latch {
    Counter(u64),
    Histogram(Vec<u64>, f64),
}

/// Takes snapshots, remembering each stat's value at the previous one.
#[derive(Debug, Default)]
struct Latches {
    seen: HashMap<Arc<str>, Latch>,
}

impl Latches {
    fn snapshot(&mut self, store: &Store) -> Snapshot {
        let mut snap = Snapshot {
            time: Some(SystemTime::now()),
            ..Default::default()
        };
        let mut next = HashMap::with_capacity(self.seen.len());
        store.for_each_used(|name, v| match v {
            Sinked::Counter(total) => {
                // A counter made again (its resource removed and re-added) starts over.
                let delta = match self.seen.get(name) {
                    Some(Latch::Counter(last)) if *last <= total => total - last,
                    _ => total,
                };
                snap.counters.push((name.clone(), total, delta));
                next.insert(name.clone(), Latch::Counter(total));
            }
            Sinked::Gauge(g) => snap.gauges.push((name.clone(), g)),
            Sinked::Histogram(h) => {
                let counts = h.bucket_counts();
                let sum = h.sum();
                let (interval, isum) = match self.seen.get(name) {
                    Some(Latch::Histogram(last, lsum))
                        if last.len() == counts.len()
                            && last.iter().zip(&counts).all(|(l, c)| l <= c) =>
                    {
                        (
                            counts.iter().zip(last).map(|(c, l)| c - l).collect(),
                            (sum - lsum).max(0.0),
                        )
                    }
                    _ => (counts.clone(), sum),
                };
                snap.histograms.push(HistogramInterval {
                    name: name.clone(),
                    bounds: h.bounds().into(),
                    counts: interval,
                    sum: isum,
                });
                next.insert(name.clone(), Latch::Histogram(counts, sum));
            }
        });
        self.seen = next;
        snap
    }
}

/// One configured sink.
enum Sink {
    Statsd(statsd::Statsd),
    MetricsService(Box<metrics_service::MetricsService>),
}

/// The sinks of a bootstrap, their histogram hook installed ([`prepare`]) and not yet
/// flushing ([`start`]).
pub struct Prepared {
    config: StatSinksConfig,
    /// Per sink, the statsd sampler it writes histogram values to.
    samplers: Vec<Option<Arc<statsd::Sampler>>>,
}

/// Opens the statsd sinks' sockets and installs their histogram hook: call it before
/// the stats are made, so that every histogram sends its values.
pub fn prepare(config: &StatSinksConfig) -> std::io::Result<Prepared> {
    let mut samplers = Vec::new();
    for s in &config.sinks {
        samplers.push(match s {
            SinkConfig::Statsd(c) => Some(Arc::new(statsd::Sampler::new(c)?)),
            SinkConfig::MetricsService(_) => None,
        });
    }
    let hooks: Vec<Arc<statsd::Sampler>> = samplers.iter().flatten().cloned().collect();
    if !hooks.is_empty() {
        super::stats::send_samples_to(Box::new(move |name, v| {
            for s in &hooks {
                s.sample(name, v);
            }
        }));
    }
    Ok(Prepared {
        config: config.clone(),
        samplers,
    })
}

/// Starts the flushes on `runtime` when the bootstrap has sinks. Returns what an admin
/// `/stats` request notifies under `stats_flush_on_admin`.
pub fn start(
    prepared: Prepared,
    store: &Arc<Store>,
    clusters: &Arc<ClusterManager>,
    node: &envoy_types::pb::envoy::config::core::v3::Node,
    runtime: &tokio::runtime::Handle,
) -> Option<Arc<Notify>> {
    let Prepared { config, samplers } = prepared;
    if config.sinks.is_empty() {
        return None;
    }
    let mut sinks = Vec::new();
    for (s, sampler) in config.sinks.iter().zip(samplers) {
        match (s, sampler) {
            (SinkConfig::Statsd(c), Some(sampler)) => sinks.push(Sink::Statsd(
                statsd::Statsd::new(c, sampler, clusters.clone(), store),
            )),
            (SinkConfig::MetricsService(c), _) => sinks.push(Sink::MetricsService(Box::new(
                metrics_service::MetricsService::new(c.clone(), clusters.clone(), node.clone()),
            ))),
            (SinkConfig::Statsd(_), None) => {}
        }
    }
    let on_admin = Arc::new(Notify::new());
    let flush = config.flush;
    let store = store.clone();
    let wake = on_admin.clone();
    runtime.spawn(async move {
        let mut latches = Latches::default();
        loop {
            match flush {
                Flush::Every(d) => tokio::time::sleep(d).await,
                Flush::OnAdmin => wake.notified().await,
            }
            let snap = latches.snapshot(&store);
            for sink in &mut sinks {
                match sink {
                    Sink::Statsd(s) => s.flush(&snap).await,
                    Sink::MetricsService(s) => s.flush(&snap),
                }
            }
        }
    });
    (flush == Flush::OnAdmin).then_some(on_admin)
}

/// How long a TCP statsd write may take before the connection is given up.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests;
