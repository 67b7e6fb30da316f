//! Outlier detection as Envoy does it: each host's consecutive 5xx, gateway failures and
//! local-origin failures (connect failures, timeouts, resets), and at every `interval`
//! its success rate and failure percentage against the cluster's other hosts. A host
//! that crosses a line is ejected (unhealthy to the balancer) for `base_ejection_time`
//! × its ejection count (capped at `max_ejection_time`), unless `max_ejection_percent`
//! of the cluster is out already; the interval timer lets it back.
//!
//! Results are reported from the workers through atomics; an ejection takes the
//! cluster's detector lock and rebuilds its balancing snapshot (rare by design).
use crate::sync::MutexExt;
use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::time::Instant;

use super::{Cluster, Host};
use crate::{
    config::OutlierConfig,
    telemetry::stats::{Counter, Gauge, Store},
};

/// `cluster_manager.outlier_detection.event_log_path`: every ejection and un-ejection
/// as a JSON line (`envoy.data.cluster.v3.OutlierDetectionEvent`), as Envoy writes them.
static EVENT_LOG: std::sync::OnceLock<Mutex<std::fs::File>> = std::sync::OnceLock::new();

/// Opens the event log (appending) for the process.
pub fn open_event_log(path: &str) -> std::io::Result<()> {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    let _ = EVENT_LOG.set(Mutex::new(f));
    Ok(())
}

/// What an ejection event says beyond its kind.
#[derive(Debug, Clone, Copy)]
enum Detail {
    Consecutive,
    SuccessRate {
        host: f64,
        average: f64,
        threshold: f64,
    },
    FailurePercentage {
        host: f64,
    },
}

fn log_event(
    cluster: &Cluster,
    host: &Host,
    eject: Option<(Kind, Detail, bool)>,
    num_ejections: u32,
    since_last: Option<Duration>,
) {
    let Some(log) = EVENT_LOG.get() else { return };
    use serde_json::{Value, json};
    // In the message's field order, as Envoy's proto JSON prints it.
    let mut fields: Vec<(&str, Value)> = Vec::new();
    if let Some((kind, ..)) = eject {
        fields.push(("type", kind.event().into()));
    }
    fields.push((
        "timestamp",
        crate::telemetry::access_log::rfc3339_millis(std::time::SystemTime::now()).into(),
    ));
    if let Some(s) = since_last {
        fields.push(("secs_since_last_action", s.as_secs().to_string().into()));
    }
    fields.push(("cluster_name", cluster.name().into()));
    fields.push(("upstream_url", host.addr.to_string().into()));
    fields.push((
        "action",
        if eject.is_some() { "EJECT" } else { "UNEJECT" }.into(),
    ));
    fields.push(("num_ejections", num_ejections.into()));
    if let Some((_, detail, enforced)) = eject {
        fields.push(("enforced", enforced.into()));
        fields.push(match detail {
            Detail::Consecutive => ("eject_consecutive_event", json!({})),
            Detail::SuccessRate {
                host,
                average,
                threshold,
            } => (
                "eject_success_rate_event",
                json!({
                    "host_success_rate": host as u32,
                    "cluster_average_success_rate": average as u32,
                    "cluster_success_rate_ejection_threshold": threshold as u32,
                }),
            ),
            Detail::FailurePercentage { host } => (
                "eject_failure_percentage_event",
                json!({ "host_success_rate": host as u32 }),
            ),
        });
    }
    let body: Vec<String> = fields.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
    let e = format!("{{{}}}", body.join(","));
    use std::io::Write;
    let _ = writeln!(log.locked(), "{e}");
}

/// What an attempt told about its host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Response headers with this status (external origin).
    Http(u16),
    /// The connection was made (local origin success; a TCP proxy's final success).
    Connected,
    /// A TCP proxy's connection succeeded: nothing more will be learnt of it.
    ConnectedFinal,
    /// No connection, or it was reset before response headers (local origin).
    ConnectFailed,
    /// The attempt timed out (local origin).
    Timeout,
}

/// Why a host is ejected, with Envoy's stat names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Consecutive5xx,
    ConsecutiveGatewayFailure,
    ConsecutiveLocalOriginFailure,
    SuccessRate,
    SuccessRateLocalOrigin,
    FailurePercentage,
    FailurePercentageLocalOrigin,
}

impl Kind {
    const ALL: [Kind; 7] = [
        Kind::Consecutive5xx,
        Kind::ConsecutiveGatewayFailure,
        Kind::ConsecutiveLocalOriginFailure,
        Kind::SuccessRate,
        Kind::SuccessRateLocalOrigin,
        Kind::FailurePercentage,
        Kind::FailurePercentageLocalOrigin,
    ];

    fn stat(self) -> &'static str {
        match self {
            Kind::Consecutive5xx => "consecutive_5xx",
            Kind::ConsecutiveGatewayFailure => "consecutive_gateway_failure",
            Kind::ConsecutiveLocalOriginFailure => "consecutive_local_origin_failure",
            Kind::SuccessRate => "success_rate",
            Kind::SuccessRateLocalOrigin => "local_origin_success_rate",
            Kind::FailurePercentage => "failure_percentage",
            Kind::FailurePercentageLocalOrigin => "local_origin_failure_percentage",
        }
    }

    /// Envoy's event type name (`envoy.data.cluster.v3.OutlierEjectionType`).
    fn event(self) -> &'static str {
        match self {
            Kind::Consecutive5xx => "CONSECUTIVE_5XX",
            Kind::ConsecutiveGatewayFailure => "CONSECUTIVE_GATEWAY_FAILURE",
            Kind::ConsecutiveLocalOriginFailure => "CONSECUTIVE_LOCAL_ORIGIN_FAILURE",
            Kind::SuccessRate => "SUCCESS_RATE",
            Kind::SuccessRateLocalOrigin => "SUCCESS_RATE_LOCAL_ORIGIN",
            Kind::FailurePercentage => "FAILURE_PERCENTAGE",
            Kind::FailurePercentageLocalOrigin => "FAILURE_PERCENTAGE_LOCAL_ORIGIN",
        }
    }

    fn enforcing(self, c: &OutlierConfig) -> u32 {
        match self {
            Kind::Consecutive5xx => c.enforcing_consecutive_5xx,
            Kind::ConsecutiveGatewayFailure => c.enforcing_consecutive_gateway_failure,
            Kind::ConsecutiveLocalOriginFailure => c.enforcing_consecutive_local_origin_failure,
            Kind::SuccessRate => c.enforcing_success_rate,
            Kind::SuccessRateLocalOrigin => c.enforcing_local_origin_success_rate,
            Kind::FailurePercentage => c.enforcing_failure_percentage,
            Kind::FailurePercentageLocalOrigin => c.enforcing_failure_percentage_local_origin,
        }
    }
}

/// A host's detector state: counters the workers bump, and its ejection history.
#[derive(Debug, Default)]
pub struct HostMonitor {
    consecutive_5xx: AtomicU32,
    consecutive_gateway: AtomicU32,
    consecutive_local: AtomicU32,
    /// This interval's requests and successes, external then local origin.
    external: Bucket,
    local: Bucket,
    /// The last interval's success rates (`f64` bits; NaN when not computed), for
    /// `/clusters`.
    pub(super) success_rate: AtomicU64,
    pub(super) local_success_rate: AtomicU64,
    ejection: Mutex<Ejection>,
}

#[derive(Debug, Default)]
struct Bucket {
    total: AtomicU64,
    success: AtomicU64,
}

impl Bucket {
    fn add(&self, ok: bool) {
        self.total.fetch_add(1, Ordering::Relaxed);
        if ok {
            self.success.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// This interval's (success rate %, volume), and a fresh start.
    fn take(&self) -> (f64, u64) {
        let total = self.total.swap(0, Ordering::Relaxed);
        let success = self.success.swap(0, Ordering::Relaxed).min(total);
        let rate = if total == 0 {
            100.0
        } else {
            100.0 * success as f64 / total as f64
        };
        (rate, total)
    }
}

#[derive(Debug, Default)]
struct Ejection {
    /// Multiplies `base_ejection_time`; one more per ejection, one less per quiet
    /// ejection time.
    backoff: u32,
    last_ejected: Option<Instant>,
    last_unejected: Option<Instant>,
    jitter: Duration,
    /// Times ejected (the event log's `num_ejections`).
    count: u32,
}

impl HostMonitor {
    pub fn new() -> Self {
        let nan = f64::NAN.to_bits();
        HostMonitor {
            success_rate: AtomicU64::new(nan),
            local_success_rate: AtomicU64::new(nan),
            ..Default::default()
        }
    }

    /// The success rate `/clusters` shows (-1 when none was computed).
    pub fn shown_success_rate(&self, local: bool) -> f64 {
        let a = if local {
            &self.local_success_rate
        } else {
            &self.success_rate
        };
        let v = f64::from_bits(a.load(Ordering::Relaxed));
        if v.is_nan() { -1.0 } else { v }
    }

    fn reset_consecutive(&self) {
        self.consecutive_5xx.store(0, Ordering::Relaxed);
        self.consecutive_gateway.store(0, Ordering::Relaxed);
        self.consecutive_local.store(0, Ordering::Relaxed);
    }
}

/// The cluster's `outlier_detection.*` stats.
#[derive(Debug)]
pub struct Stats {
    pub ejections_active: Gauge,
    ejections_overflow: Counter,
    ejections_total: Counter,
    ejections_enforced_total: Counter,
    detected: [Counter; 7],
    enforced: [Counter; 7],
    /// Envoy's deprecated `ejections_consecutive_5xx` and `ejections_success_rate`.
    legacy_5xx: Counter,
    legacy_success_rate: Counter,
}

impl Stats {
    fn new(store: &Store, cluster: &str) -> Self {
        let label = [("envoy_cluster_name", cluster)];
        let c = |stat: &str| {
            store.counter(
                ["cluster.", cluster, ".outlier_detection.", stat].concat(),
                &["envoy_cluster_outlier_detection_", stat].concat(),
                &label,
            )
        };
        Stats {
            ejections_active: store.gauge(
                ["cluster.", cluster, ".outlier_detection.ejections_active"].concat(),
                "envoy_cluster_outlier_detection_ejections_active",
                &label,
            ),
            ejections_overflow: c("ejections_overflow"),
            ejections_total: c("ejections_total"),
            ejections_enforced_total: c("ejections_enforced_total"),
            detected: Kind::ALL.map(|k| c(&["ejections_detected_", k.stat()].concat())),
            enforced: Kind::ALL.map(|k| c(&["ejections_enforced_", k.stat()].concat())),
            legacy_5xx: c("ejections_consecutive_5xx"),
            legacy_success_rate: c("ejections_success_rate"),
        }
    }
}

/// A cluster's detector.
#[derive(Debug)]
pub struct Detector {
    pub config: OutlierConfig,
    pub stats: Stats,
    /// Serializes ejections and un-ejections.
    lock: Mutex<()>,
}

impl Detector {
    pub fn new(config: OutlierConfig, store: &Store, cluster: &str) -> Self {
        let stats = Stats::new(store, cluster);
        stats.ejections_active.set(0);
        Detector {
            config,
            stats,
            lock: Mutex::new(()),
        }
    }

    /// Records what an attempt told about `host`; may eject it.
    pub fn report(&self, cluster: &Cluster, host: &Arc<Host>, outcome: Outcome) {
        let m = &host.monitor;
        let c = &self.config;
        let code = match (outcome, c.split_external_local_origin_errors) {
            (Outcome::Http(code), _) => code,
            (Outcome::Connected, false) => return,
            (Outcome::ConnectedFinal, false) => 200,
            (Outcome::Timeout, false) => 504,
            (Outcome::ConnectFailed, false) => 503,
            (Outcome::Connected | Outcome::ConnectedFinal, true) => {
                m.local.add(true);
                m.consecutive_local.store(0, Ordering::Relaxed);
                if outcome == Outcome::Connected {
                    return;
                }
                200
            }
            (Outcome::Timeout | Outcome::ConnectFailed, true) => {
                m.local.add(false);
                let n = m.consecutive_local.fetch_add(1, Ordering::Relaxed) + 1;
                if n == c.consecutive_local_origin_failure {
                    self.on_consecutive(cluster, host, Kind::ConsecutiveLocalOriginFailure);
                }
                return;
            }
        };
        if (500..600).contains(&code) {
            m.external.add(false);
            if matches!(code, 502..=504) {
                let n = m.consecutive_gateway.fetch_add(1, Ordering::Relaxed) + 1;
                if n == c.consecutive_gateway_failure {
                    self.on_consecutive(cluster, host, Kind::ConsecutiveGatewayFailure);
                }
            } else {
                m.consecutive_gateway.store(0, Ordering::Relaxed);
            }
            let n = m.consecutive_5xx.fetch_add(1, Ordering::Relaxed) + 1;
            if n == c.consecutive_5xx {
                self.on_consecutive(cluster, host, Kind::Consecutive5xx);
            }
        } else {
            m.external.add(true);
            m.consecutive_5xx.store(0, Ordering::Relaxed);
            m.consecutive_gateway.store(0, Ordering::Relaxed);
        }
    }

    fn on_consecutive(&self, cluster: &Cluster, host: &Arc<Host>, kind: Kind) {
        let _g = self.lock.locked();
        if host.is_ejected() || !cluster.hosts().iter().any(|h| Arc::ptr_eq(h, host)) {
            return;
        }
        self.detected(kind);
        self.eject(cluster, host, kind, Detail::Consecutive, Instant::now());
        match kind {
            Kind::Consecutive5xx => host.monitor.consecutive_5xx.store(0, Ordering::Relaxed),
            Kind::ConsecutiveGatewayFailure => {
                host.monitor.consecutive_gateway.store(0, Ordering::Relaxed)
            }
            _ => host.monitor.consecutive_local.store(0, Ordering::Relaxed),
        }
    }

    fn detected(&self, kind: Kind) {
        self.stats.detected[kind as usize].inc();
        self.stats.ejections_total.inc();
        match kind {
            Kind::Consecutive5xx => self.stats.legacy_5xx.inc(),
            Kind::SuccessRate => self.stats.legacy_success_rate.inc(),
            _ => {}
        }
    }

    /// Ejects `host` unless that would take more than `max_ejection_percent` of the
    /// hosts out (then `ejections_overflow`, even for a detection that would not be
    /// enforced), or the `enforcing_*` roll says no. Envoy 1.40 does not make an
    /// exception for the first ejection: with the default 10 % and fewer than ten hosts,
    /// none is ejected.
    fn eject(&self, cluster: &Cluster, host: &Arc<Host>, kind: Kind, detail: Detail, now: Instant) {
        let c = &self.config;
        let hosts = cluster.hosts().len().max(1);
        let active = self.stats.ejections_active.get().max(0) as usize;
        let percent = 100.0 * (active + 1) as f64 / hosts as f64;
        if percent > f64::from(c.max_ejection_percent.min(100)) {
            self.stats.ejections_overflow.inc();
            return;
        }
        let enforcing = kind.enforcing(c);
        if enforcing == 0 || (enforcing < 100 && fastrand::u32(..100) >= enforcing) {
            let e = host.monitor.ejection.locked();
            let since = e
                .last_unejected
                .or(e.last_ejected)
                .map(|t| now.duration_since(t));
            log_event(cluster, host, Some((kind, detail, false)), e.count, since);
            return;
        }
        self.stats.ejections_enforced_total.inc();
        self.stats.enforced[kind as usize].inc();
        self.stats.ejections_active.inc();
        {
            let mut e = host.monitor.ejection.locked();
            // The backoff stops growing once base × backoff reaches the maximum.
            if c.base_ejection_time * e.backoff < c.max_ejection_time.max(c.base_ejection_time) {
                e.backoff += 1;
            }
            let since = e
                .last_unejected
                .or(e.last_ejected)
                .map(|t| now.duration_since(t));
            e.last_ejected = Some(now);
            e.count += 1;
            log_event(cluster, host, Some((kind, detail, true)), e.count, since);
            e.jitter = if c.max_ejection_time_jitter.is_zero() {
                Duration::ZERO
            } else {
                c.max_ejection_time_jitter.mul_f64(fastrand::f64())
            };
        }
        host.ejected.store(true, Ordering::Relaxed);
        tracing::info!(
            cluster = cluster.name(),
            host = %host.addr,
            "outlier detection: ejected ({})",
            kind.event()
        );
        cluster.health_changed();
    }

    /// A passing active health check lets an ejected host back at once.
    pub fn uneject_after_health_check(&self, cluster: &Cluster, host: &Arc<Host>) {
        if !host.is_ejected() {
            return;
        }
        let _g = self.lock.locked();
        if !host.is_ejected() {
            return;
        }
        let now = Instant::now();
        let mut e = host.monitor.ejection.locked();
        host.ejected.store(false, Ordering::Relaxed);
        host.monitor.reset_consecutive();
        let since = e.last_ejected.map(|t| now.duration_since(t));
        log_event(cluster, host, None, e.count, since);
        e.last_unejected = Some(now);
        drop(e);
        self.stats.ejections_active.dec();
        cluster.health_changed();
    }

    /// The interval's work: let hosts back whose time is served, then compute success
    /// rates and failure percentages and eject the outliers.
    pub fn on_interval(&self, cluster: &Cluster, now: Instant) {
        let _g = self.lock.locked();
        let c = &self.config;
        let hosts = cluster.hosts();
        let mut changed = false;
        for h in &hosts {
            let mut e = h.monitor.ejection.locked();
            if !h.is_ejected() {
                // Each base ejection time a host stays in takes one off its backoff.
                if e.backoff > 0
                    && e.last_unejected
                        .is_some_and(|t| now.duration_since(t) >= c.base_ejection_time)
                {
                    e.backoff -= 1;
                    e.last_unejected = Some(now);
                }
                continue;
            }
            let served = e
                .last_ejected
                .map_or(Duration::MAX, |t| now.duration_since(t));
            let due = (c.base_ejection_time * e.backoff)
                .min(c.max_ejection_time.max(c.base_ejection_time))
                + e.jitter;
            if due <= served {
                h.ejected.store(false, Ordering::Relaxed);
                h.monitor.reset_consecutive();
                log_event(cluster, h, None, e.count, Some(served));
                e.last_unejected = Some(now);
                self.stats.ejections_active.dec();
                changed = true;
                tracing::info!(cluster = cluster.name(), host = %h.addr, "outlier detection: un-ejected");
            }
        }
        if changed {
            cluster.health_changed();
        }
        for local in [false, true] {
            if local && !c.split_external_local_origin_errors {
                // Without the split there is no local-origin bucket to judge by.
                for h in &hosts {
                    h.monitor.local.take();
                }
                continue;
            }
            self.judge_rates(cluster, &hosts, local, now);
        }
    }

    fn judge_rates(&self, cluster: &Cluster, hosts: &[Arc<Host>], local: bool, now: Instant) {
        let c = &self.config;
        let (sr_kind, fp_kind) = if local {
            (
                Kind::SuccessRateLocalOrigin,
                Kind::FailurePercentageLocalOrigin,
            )
        } else {
            (Kind::SuccessRate, Kind::FailurePercentage)
        };
        let mut sr_hosts = Vec::new();
        let mut fp_hosts = Vec::new();
        for h in hosts {
            let bucket = if local {
                &h.monitor.local
            } else {
                &h.monitor.external
            };
            let (rate, volume) = bucket.take();
            let shown = if local {
                &h.monitor.local_success_rate
            } else {
                &h.monitor.success_rate
            };
            shown.store(f64::NAN.to_bits(), Ordering::Relaxed);
            if h.is_ejected() {
                continue;
            }
            if volume >= u64::from(c.success_rate_request_volume) {
                sr_hosts.push((h, rate));
                shown.store(rate.to_bits(), Ordering::Relaxed);
            }
            if volume >= u64::from(c.failure_percentage_request_volume) {
                fp_hosts.push((h, rate));
            }
        }
        if !sr_hosts.is_empty() && sr_hosts.len() >= c.success_rate_minimum_hosts as usize {
            let n = sr_hosts.len() as f64;
            let mean = sr_hosts.iter().map(|(_, r)| r).sum::<f64>() / n;
            let var = sr_hosts
                .iter()
                .map(|(_, r)| (r - mean).powi(2))
                .sum::<f64>()
                / n;
            let threshold = mean - f64::from(c.success_rate_stdev_factor) / 1000.0 * var.sqrt();
            for (h, rate) in &sr_hosts {
                if *rate < threshold && !h.is_ejected() {
                    self.detected(sr_kind);
                    let detail = Detail::SuccessRate {
                        host: *rate,
                        average: mean,
                        threshold,
                    };
                    self.eject(cluster, h, sr_kind, detail, now);
                }
            }
        }
        if !fp_hosts.is_empty() && fp_hosts.len() >= c.failure_percentage_minimum_hosts as usize {
            for (h, rate) in &fp_hosts {
                if 100.0 - rate >= f64::from(c.failure_percentage_threshold) && !h.is_ejected() {
                    self.detected(fp_kind);
                    let detail = Detail::FailurePercentage { host: *rate };
                    self.eject(cluster, h, fp_kind, detail, now);
                }
            }
        }
    }
}

/// Runs the cluster's detector every `interval` until the cluster is dropped.
pub fn spawn(cluster: &Arc<Cluster>) {
    let Some(d) = &cluster.outlier else { return };
    let every = d.config.interval;
    let weak = Arc::downgrade(cluster);
    tokio::spawn(async move {
        let mut next = Instant::now() + every;
        loop {
            tokio::time::sleep_until(next).await;
            next += every;
            let Some(c) = weak.upgrade() else { return };
            if let Some(d) = &c.outlier {
                d.on_interval(&c, Instant::now());
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        config::{ClusterConfig, EndpointConfig},
        telemetry::stats::Store,
    };

    fn cluster(n: u16, outlier: OutlierConfig) -> (Arc<Cluster>, Arc<Store>) {
        let store = Store::new();
        let config = ClusterConfig {
            name: "c".into(),
            endpoints: (1..=n)
                .map(|port| EndpointConfig {
                    host: "127.0.0.1".into(),
                    port,
                    ..Default::default()
                })
                .collect(),
            outlier: Some(outlier),
            ..Default::default()
        };
        let c = Arc::new(Cluster::new(config, &store, &Default::default()));
        (c, store)
    }

    fn picks(c: &Cluster, n: usize) -> Vec<u16> {
        (0..n).map(|_| c.pick(None).unwrap().addr.port()).collect()
    }

    fn stat(store: &Store, name: &str) -> i64 {
        let filter = crate::telemetry::stats::Filter {
            used_only: false,
            regex: None,
        };
        let text = store.render_text(&filter);
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .map_or(-1, |v| v.parse().unwrap())
    }

    #[tokio::test(start_paused = true)]
    async fn consecutive_5xx_eject_until_the_ejection_time_passes() {
        let (c, store) = cluster(
            2,
            OutlierConfig {
                consecutive_5xx: 3,
                base_ejection_time: Duration::from_secs(30),
                max_ejection_percent: 100,
                ..Default::default()
            },
        );
        let bad = c.hosts()[0].clone();
        let d = c.outlier.as_ref().unwrap();
        for _ in 0..2 {
            c.report(&bad, Outcome::Http(503));
        }
        // A success in between starts the count again.
        c.report(&bad, Outcome::Http(200));
        for _ in 0..2 {
            c.report(&bad, Outcome::Http(500));
        }
        assert!(!bad.is_ejected());
        c.report(&bad, Outcome::ConnectFailed);
        assert!(bad.is_ejected());
        assert!(picks(&c, 10).iter().all(|&p| p == 2));
        assert_eq!(d.stats.ejections_active.get(), 1);
        assert_eq!(
            stat(
                &store,
                "cluster.c.outlier_detection.ejections_enforced_consecutive_5xx"
            ),
            1
        );
        assert_eq!(bad.health_flags(), "/failed_outlier_check");
        // The interval runs every 10 s; the host comes back at the first one after 30 s.
        tokio::time::advance(Duration::from_secs(29)).await;
        d.on_interval(&c, Instant::now());
        assert!(bad.is_ejected());
        tokio::time::advance(Duration::from_secs(1)).await;
        d.on_interval(&c, Instant::now());
        assert!(!bad.is_ejected());
        assert_eq!(d.stats.ejections_active.get(), 0);
        assert!(picks(&c, 10).contains(&1));
        // Ejected again at once: twice the base ejection time now.
        for _ in 0..3 {
            c.report(&bad, Outcome::Http(503));
        }
        assert!(bad.is_ejected());
        tokio::time::advance(Duration::from_secs(59)).await;
        d.on_interval(&c, Instant::now());
        assert!(bad.is_ejected());
        tokio::time::advance(Duration::from_secs(1)).await;
        d.on_interval(&c, Instant::now());
        assert!(!bad.is_ejected());
    }

    #[tokio::test(start_paused = true)]
    async fn max_ejection_percent_keeps_hosts_in() {
        let (c, store) = cluster(
            4,
            OutlierConfig {
                consecutive_5xx: 1,
                ..Default::default()
            },
        );
        for h in c.hosts() {
            c.report(&h, Outcome::Http(500));
        }
        // 10 % of 4 hosts is none (Envoy 1.40 ejects none either).
        assert_eq!(c.hosts().iter().filter(|h| h.is_ejected()).count(), 0);
        assert_eq!(
            stat(&store, "cluster.c.outlier_detection.ejections_overflow"),
            4
        );
        // At 50 %, two of the four may go.
        let (c, _) = cluster(
            4,
            OutlierConfig {
                consecutive_5xx: 1,
                max_ejection_percent: 50,
                ..Default::default()
            },
        );
        for h in c.hosts() {
            c.report(&h, Outcome::Http(500));
        }
        assert_eq!(c.hosts().iter().filter(|h| h.is_ejected()).count(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn all_hosts_ejected_means_panic_over_all_of_them() {
        let (c, store) = cluster(
            2,
            OutlierConfig {
                consecutive_5xx: 1,
                max_ejection_percent: 100,
                ..Default::default()
            },
        );
        for h in c.hosts() {
            c.report(&h, Outcome::Http(503));
        }
        assert!(c.hosts().iter().all(|h| h.is_ejected()));
        let got = picks(&c, 20);
        assert!(got.contains(&1) && got.contains(&2), "{got:?}");
        assert_eq!(stat(&store, "cluster.c.lb_healthy_panic"), 20);
    }

    #[tokio::test(start_paused = true)]
    async fn gateway_failures_are_detected_but_not_enforced_by_default() {
        let (c, store) = cluster(
            2,
            OutlierConfig {
                consecutive_gateway_failure: 2,
                max_ejection_percent: 100,
                ..Default::default()
            },
        );
        let h = c.hosts()[0].clone();
        c.report(&h, Outcome::Http(504));
        c.report(&h, Outcome::Timeout);
        assert!(!h.is_ejected());
        assert_eq!(
            stat(
                &store,
                "cluster.c.outlier_detection.ejections_detected_consecutive_gateway_failure"
            ),
            1
        );
    }

    #[tokio::test(start_paused = true)]
    async fn split_local_origin_failures_count_apart_from_5xx() {
        let (c, _) = cluster(
            2,
            OutlierConfig {
                split_external_local_origin_errors: true,
                consecutive_local_origin_failure: 2,
                consecutive_5xx: 2,
                max_ejection_percent: 100,
                ..Default::default()
            },
        );
        let h = c.hosts()[0].clone();
        c.report(&h, Outcome::ConnectFailed);
        c.report(&h, Outcome::Http(503));
        // One of each kind: neither count reached.
        assert!(!h.is_ejected());
        c.report(&h, Outcome::Timeout);
        assert!(h.is_ejected());
    }

    #[tokio::test(start_paused = true)]
    async fn a_low_success_rate_is_ejected_at_the_interval() {
        let (c, _) = cluster(
            5,
            OutlierConfig {
                success_rate_request_volume: 10,
                max_ejection_percent: 100,
                consecutive_5xx: 1000,
                ..Default::default()
            },
        );
        let hosts = c.hosts();
        for (i, h) in hosts.iter().enumerate() {
            for n in 0..20 {
                let fail = i == 0 && n % 2 == 0;
                c.report(h, Outcome::Http(if fail { 500 } else { 200 }));
            }
        }
        let d = c.outlier.as_ref().unwrap();
        d.on_interval(&c, Instant::now());
        assert!(hosts[0].is_ejected());
        assert!(hosts[1..].iter().all(|h| !h.is_ejected()));
        assert_eq!(hosts[1].monitor.shown_success_rate(false), 100.0);
    }
}
