//! Envoy-style stats: counters and gauges with Envoy's flat names (`/stats`) and the
//! tag-extracted Prometheus names Envoy publishes (`/stats/prometheus`).
//!
//! Handles are resolved when config is compiled; the traffic path only touches
//! atomics. prometheus-client is not used here because its counter encoding always
//! appends `_total`, and Envoy's names (e.g. `envoy_cluster_upstream_rq`) do not.
use crate::sync::MutexExt;
use std::{
    collections::{HashMap, HashSet},
    fmt::Write,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering},
    },
};

use arc_swap::ArcSwap;

use super::naming::Naming;

#[derive(Clone, Debug, Default)]
pub struct Counter(Arc<AtomicU64>);

impl Counter {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Clone, Debug, Default)]
pub struct Gauge(Arc<GaugeCell>);

#[derive(Debug, Default)]
struct GaugeCell {
    value: AtomicI64,
    /// Set on the first write, for `/stats?usedonly` (a gauge back at 0 was still used).
    used: AtomicBool,
}

impl Gauge {
    pub fn inc(&self) {
        self.0.value.fetch_add(1, Ordering::Relaxed);
        self.mark_used();
    }
    pub fn dec(&self) {
        self.0.value.fetch_sub(1, Ordering::Relaxed);
    }
    pub fn set(&self, v: i64) {
        self.0.value.store(v, Ordering::Relaxed);
        self.mark_used();
    }
    pub fn get(&self) -> i64 {
        self.0.value.load(Ordering::Relaxed)
    }
    fn mark_used(&self) {
        if !self.0.used.load(Ordering::Relaxed) {
            self.0.used.store(true, Ordering::Relaxed);
        }
    }
    fn used(&self) -> bool {
        self.0.used.load(Ordering::Relaxed)
    }
}

/// Decrements a gauge when dropped: an active-connection or active-request guard.
#[derive(Debug)]
pub struct GaugeGuard(Gauge);

impl GaugeGuard {
    pub fn new(g: &Gauge) -> Self {
        g.inc();
        GaugeGuard(g.clone())
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Envoy's default histogram buckets (milliseconds).
const BUCKETS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];

/// A histogram of millisecond values, with Envoy's default buckets unless the
/// bootstrap's `histogram_bucket_settings` gives its name others.
#[derive(Clone, Debug)]
pub struct Histogram(Arc<HistogramCells>);

impl Default for Histogram {
    fn default() -> Self {
        Histogram::with_bounds(None)
    }
}

#[derive(Debug)]
struct HistogramCells {
    /// Upper bounds, ascending; `None` for Envoy's defaults.
    bounds: Option<Arc<[f64]>>,
    /// The flat name, kept only when a statsd sink takes every recorded value.
    name: Option<Arc<str>>,
    /// Per bucket (not cumulative), the last one for values above every bound.
    counts: Box<[AtomicU64]>,
    /// Sum in microseconds.
    sum_us: AtomicU64,
}

/// Where every recorded histogram value also goes, with the histogram's flat name:
/// the statsd sinks, which send each value as Envoy does (set once, before the stats
/// are made).
type SampleSink = Box<dyn Fn(&str, u64) + Send + Sync>;
static SAMPLE_SINK: std::sync::OnceLock<SampleSink> = std::sync::OnceLock::new();

/// Sends every value recorded from now on in a histogram made after this call to
/// `sink`. Only the first call takes effect (one set of sinks per process).
pub fn send_samples_to(sink: SampleSink) {
    let _ = SAMPLE_SINK.set(sink);
}

impl Histogram {
    fn with_bounds(bounds: Option<Arc<[f64]>>) -> Self {
        Histogram::named(bounds, None)
    }

    fn named(bounds: Option<Arc<[f64]>>, name: Option<&str>) -> Self {
        let n = bounds.as_ref().map_or(BUCKETS.len(), |b| b.len()) + 1;
        Histogram(Arc::new(HistogramCells {
            bounds,
            name: name.map(Arc::from),
            counts: (0..n).map(|_| AtomicU64::new(0)).collect(),
            sum_us: AtomicU64::new(0),
        }))
    }

    /// The buckets' upper bounds, ascending (without the last, unbounded one).
    pub fn bounds(&self) -> &[f64] {
        self.0.bounds.as_deref().unwrap_or(&BUCKETS)
    }

    /// Per-bucket counts (not cumulative), one more than [`Histogram::bounds`].
    pub fn bucket_counts(&self) -> Vec<u64> {
        self.0
            .counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect()
    }

    /// The sum of the recorded values, in the histogram's unit.
    pub fn sum(&self) -> f64 {
        self.sum_ms()
    }

    pub fn record(&self, d: std::time::Duration) {
        let ms = d.as_secs_f64() * 1000.0;
        let bounds = self.bounds();
        let i = bounds.iter().position(|b| ms <= *b).unwrap_or(bounds.len());
        self.0.counts[i].fetch_add(1, Ordering::Relaxed);
        self.0
            .sum_us
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
        self.sample(d.as_millis() as u64);
    }

    /// Hands the value to the statsd sinks, in whole units as Envoy records it.
    fn sample(&self, v: u64) {
        if let Some(name) = &self.0.name
            && let Some(sink) = SAMPLE_SINK.get()
        {
            sink(name, v);
        }
    }

    /// Records a value in the histogram's own unit (bytes, whole milliseconds).
    pub fn record_value(&self, v: u64) {
        let bounds = self.bounds();
        let i = bounds
            .iter()
            .position(|b| v as f64 <= *b)
            .unwrap_or(bounds.len());
        self.0.counts[i].fetch_add(1, Ordering::Relaxed);
        self.0
            .sum_us
            .fetch_add(v.saturating_mul(1000), Ordering::Relaxed);
        self.sample(v);
    }

    pub fn count(&self) -> u64 {
        self.0
            .counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }

    fn sum_ms(&self) -> f64 {
        self.0.sum_us.load(Ordering::Relaxed) as f64 / 1000.0
    }
}

#[derive(Debug)]
enum Value {
    Counter(Counter),
    Gauge(Gauge),
    Histogram(Histogram),
}

impl Value {
    /// Another handle on the same stat.
    fn handle(&self) -> Value {
        match self {
            Value::Counter(c) => Value::Counter(c.clone()),
            Value::Gauge(g) => Value::Gauge(g.clone()),
            Value::Histogram(h) => Value::Histogram(h.clone()),
        }
    }

    /// Whether anything was ever recorded: Envoy's `usedonly`.
    fn used(&self) -> bool {
        match self {
            Value::Counter(c) => c.get() > 0,
            Value::Gauge(g) => g.used(),
            Value::Histogram(h) => h.count() > 0,
        }
    }

    /// Whether the store holds the only handle: what counted into it is gone.
    fn is_unheld(&self) -> bool {
        match self {
            Value::Counter(c) => Arc::strong_count(&c.0) == 1,
            Value::Gauge(g) => Arc::strong_count(&g.0) == 1,
            Value::Histogram(h) => Arc::strong_count(&h.0) == 1,
        }
    }
}

/// A stat's value as [`Store::for_each_used`] hands it to a sink.
#[derive(Debug)]
pub enum Sinked<'a> {
    Counter(u64),
    Gauge(i64),
    Histogram(&'a Histogram),
}

#[derive(Debug)]
struct Entry {
    /// Envoy's flat name, e.g. `cluster.backend.upstream_rq_200`.
    flat: Arc<str>,
    /// Prometheus name, e.g. `envoy_cluster_upstream_rq`.
    prom: Arc<str>,
    /// Rendered labels, e.g. `envoy_response_code="200",envoy_cluster_name="backend"`.
    labels: Arc<str>,
    value: Value,
}

/// All stats of the process.
#[derive(Debug, Default)]
pub struct Store {
    entries: Mutex<Entries>,
    /// The bootstrap's `stats_config`.
    naming: Naming,
}

/// Which stats a listing shows: Envoy's `usedonly` and `filter` (a regex searched in
/// the flat name).
#[derive(Debug, Default)]
pub struct Filter {
    pub used_only: bool,
    pub regex: Option<regex::Regex>,
}

impl Filter {
    fn shows(&self, e: &Entry) -> bool {
        (!self.used_only || e.value.used())
            && self.regex.as_ref().is_none_or(|r| r.is_match(&e.flat))
    }
}

/// The index maps hash stat names from config, never traffic, and registering the
/// stats of 10,000 clusters hashes millions of them: foldhash instead of SipHash
/// (which was a sixth of a 10,000-cluster xDS push).
type Hasher = foldhash::fast::RandomState;

#[derive(Debug, Default)]
struct Entries {
    list: Vec<Entry>,
    /// Keys share the entries' names.
    by_flat: HashMap<Arc<str>, usize, Hasher>,
    /// One copy of each Prometheus name and rendered label set: every cluster has the
    /// same ~20 names, and all of a cluster's stats the same labels, so with 10,000
    /// clusters separate strings were most of the stats' memory.
    shared: HashSet<Arc<str>, Hasher>,
    /// Where a name or label set is rendered to be looked up in `shared`: a string is
    /// allocated only for one not seen before.
    scratch: String,
}

impl Entries {
    fn find(&self, flat: &str) -> Option<&Value> {
        self.by_flat.get(flat).map(|&i| &self.list[i].value)
    }

    fn push(&mut self, flat: String, prom: &str, labels: &[(&str, &str)], value: Value) {
        let flat: Arc<str> = flat.into();
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        prom_name(prom, &mut scratch);
        let prom = self.share(&scratch);
        scratch.clear();
        render_labels(labels, &mut scratch);
        let labels = self.share(&scratch);
        self.scratch = scratch;
        self.by_flat.insert(flat.clone(), self.list.len());
        self.list.push(Entry {
            flat,
            prom,
            labels,
            value,
        });
    }

    fn share(&mut self, s: &str) -> Arc<str> {
        if let Some(shared) = self.shared.get(s) {
            return shared.clone();
        }
        let shared: Arc<str> = s.into();
        self.shared.insert(shared.clone());
        shared
    }
}

impl Store {
    pub fn new() -> Arc<Self> {
        Arc::new(Store::default())
    }

    /// A store whose names, labels, buckets and existence follow a `stats_config`.
    pub fn with_naming(naming: Naming) -> Arc<Self> {
        Arc::new(Store {
            naming,
            ..Default::default()
        })
    }

    /// A counter named `flat` in Envoy's flat form, published to Prometheus as `prom`
    /// with `labels` (or as the configured tags make it). Registering the same flat
    /// name twice returns the same counter.
    pub fn counter(&self, flat: String, prom: &str, labels: &[(&str, &str)]) -> Counter {
        match self.register(flat, prom, labels, || Value::Counter(Counter::default())) {
            Value::Counter(c) => c,
            _ => Counter::default(),
        }
    }

    /// A counter whose Prometheus name and labels are what Envoy's default tag
    /// extractors make of `flat` (for stats whose names the extractors take apart in
    /// ways not worth spelling out by hand, such as RBAC's).
    pub fn counter_tagged_by_default(&self, flat: String) -> Counter {
        let (prom, tags) = default_tags(&flat);
        let labels: Vec<(&str, &str)> =
            tags.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        self.counter(flat, &prom, &labels)
    }

    /// A gauge named as [`Store::counter_tagged_by_default`] names counters.
    pub fn gauge_tagged_by_default(&self, flat: String) -> Gauge {
        let (prom, tags) = default_tags(&flat);
        let labels: Vec<(&str, &str)> =
            tags.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        self.gauge(flat, &prom, &labels)
    }

    pub fn gauge(&self, flat: String, prom: &str, labels: &[(&str, &str)]) -> Gauge {
        match self.register(flat, prom, labels, || Value::Gauge(Gauge::default())) {
            Value::Gauge(g) => g,
            _ => Gauge::default(),
        }
    }

    /// A histogram of milliseconds (Envoy's `update_duration` and the like).
    pub fn histogram(&self, flat: String, prom: &str, labels: &[(&str, &str)]) -> Histogram {
        let bounds = self.naming.buckets_for(&flat);
        let name = SAMPLE_SINK.get().map(|_| flat.clone());
        match self.register(flat, prom, labels, || {
            Value::Histogram(Histogram::named(bounds, name.as_deref()))
        }) {
            Value::Histogram(h) => h,
            _ => Histogram::default(),
        }
    }

    /// A counter whose labels are given, whatever the `stats_tags` would extract from
    /// its flat name (Envoy's stats made with explicit tags, as Istio's are).
    pub fn counter_with_tags(&self, flat: String, prom: &str, labels: &[(&str, &str)]) -> Counter {
        match self.register_as(flat, prom, labels, true, || {
            Value::Counter(Counter::default())
        }) {
            Value::Counter(c) => c,
            _ => Counter::default(),
        }
    }

    /// A gauge whose labels are given (see [`Store::counter_with_tags`]).
    pub fn gauge_with_tags(&self, flat: String, prom: &str, labels: &[(&str, &str)]) -> Gauge {
        match self.register_as(flat, prom, labels, true, || Value::Gauge(Gauge::default())) {
            Value::Gauge(g) => g,
            _ => Gauge::default(),
        }
    }

    /// A histogram whose labels are given (see [`Store::counter_with_tags`]).
    pub fn histogram_with_tags(
        &self,
        flat: String,
        prom: &str,
        labels: &[(&str, &str)],
    ) -> Histogram {
        let bounds = self.naming.buckets_for(&flat);
        let name = SAMPLE_SINK.get().map(|_| flat.clone());
        match self.register_as(flat, prom, labels, true, || {
            Value::Histogram(Histogram::named(bounds, name.as_deref()))
        }) {
            Value::Histogram(h) => h,
            _ => Histogram::default(),
        }
    }

    /// The stat named `flat`, made by `make` if new. A name the `stats_matcher` rejects
    /// gets a handle of its own that nothing lists, as Envoy's null stats.
    fn register(
        &self,
        flat: String,
        prom: &str,
        labels: &[(&str, &str)],
        make: impl FnOnce() -> Value,
    ) -> Value {
        self.register_as(flat, prom, labels, false, make)
    }

    /// [`Store::register`]; with `explicit`, the labels given are kept.
    fn register_as(
        &self,
        flat: String,
        prom: &str,
        labels: &[(&str, &str)],
        explicit: bool,
        make: impl FnOnce() -> Value,
    ) -> Value {
        if !self.naming.accepts(&flat) {
            return make();
        }
        let mut entries = self.entries.locked();
        if let Some(v) = entries.find(&flat) {
            return v.handle();
        }
        let v = make();
        let handle = v.handle();
        match self.naming.prometheus(&flat).filter(|_| !explicit) {
            Some((prom, labels)) => {
                let labels: Vec<(&str, &str)> = labels
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                entries.push(flat, &prom, &labels, v);
            }
            None => entries.push(flat, prom, labels, v),
        }
        handle
    }

    /// Drops the stats nothing holds any more: those of removed clusters, listeners
    /// and route configurations, as Envoy frees a scope's stats with the scope. A
    /// resource added again starts from zero, as in Envoy. Returns how many went.
    pub fn release_unheld(&self) -> usize {
        let mut entries = self.entries.locked();
        let before = entries.list.len();
        entries.list.retain(|e| !e.value.is_unheld());
        let released = before - entries.list.len();
        if released > 0 {
            let Entries {
                list,
                by_flat,
                shared,
                ..
            } = &mut *entries;
            *by_flat = list
                .iter()
                .enumerate()
                .map(|(i, e)| (e.flat.clone(), i))
                .collect();
            shared.retain(|s| Arc::strong_count(s) > 1);
        }
        released
    }

    /// Calls `f` with each stat a sink reports: counters counted at least once, gauges
    /// ever set, histograms with a value (Envoy's `used()`), in the order registered.
    pub fn for_each_used(&self, mut f: impl FnMut(&Arc<str>, Sinked<'_>)) {
        let entries = self.entries.locked();
        for e in entries.list.iter().filter(|e| e.value.used()) {
            match &e.value {
                Value::Counter(c) => f(&e.flat, Sinked::Counter(c.get())),
                Value::Gauge(g) => f(&e.flat, Sinked::Gauge(g.get())),
                Value::Histogram(h) => f(&e.flat, Sinked::Histogram(h)),
            }
        }
    }

    /// Envoy's `/stats` text: counters and gauges as `name: value` sorted by name, then
    /// histograms.
    pub fn render_text(&self, filter: &Filter) -> String {
        self.rows(filter)
            .into_iter()
            .fold(String::new(), |mut out, (name, v)| {
                let _ = writeln!(out, "{name}: {v}");
                out
            })
    }

    /// `/stats?format=json`: `{"stats":[{"name":…,"value":…}]}` in the text order.
    pub fn render_json(&self, filter: &Filter) -> String {
        let stats: Vec<serde_json::Value> = self
            .rows(filter)
            .into_iter()
            .map(|(name, v)| match v.parse::<i64>() {
                Ok(n) => serde_json::json!({ "name": name, "value": n }),
                Err(_) => serde_json::json!({ "name": name, "value": v }),
            })
            .collect();
        serde_json::json!({ "stats": stats }).to_string()
    }

    fn rows(&self, filter: &Filter) -> Vec<(String, String)> {
        let entries = self.entries.locked();
        let mut rows: Vec<(bool, &str, String)> = entries
            .list
            .iter()
            .filter(|e| filter.shows(e))
            .map(|e| match &e.value {
                Value::Counter(c) => (false, &*e.flat, c.get().to_string()),
                Value::Gauge(g) => (false, &*e.flat, g.get().to_string()),
                Value::Histogram(h) => (
                    true,
                    &*e.flat,
                    if h.count() == 0 {
                        "No recorded values".to_owned()
                    } else {
                        format!("count={} sum={}", h.count(), h.sum_ms())
                    },
                ),
            })
            .collect();
        rows.sort();
        rows.into_iter()
            .map(|(_, n, v)| (n.to_owned(), v))
            .collect()
    }

    /// Prometheus text exposition (version 0.0.4), grouped by metric name. A sample
    /// without labels is written `name{} value`, as Envoy writes it.
    pub fn render_prometheus(&self, filter: &Filter) -> String {
        let entries = self.entries.locked();
        let mut order: Vec<&Entry> = entries.list.iter().filter(|e| filter.shows(e)).collect();
        order.sort_by(|a, b| a.prom.cmp(&b.prom).then(a.labels.cmp(&b.labels)));
        let mut out = String::with_capacity(order.len() * 96);
        let mut last = "";
        for e in order {
            let (kind, v) = match &e.value {
                Value::Counter(c) => ("counter", c.get() as i64),
                Value::Gauge(g) => ("gauge", g.get()),
                Value::Histogram(h) => {
                    if *e.prom != *last {
                        let _ = writeln!(out, "# TYPE {} histogram", e.prom);
                        last = &e.prom;
                    }
                    let sep = if e.labels.is_empty() { "" } else { "," };
                    let mut total = 0;
                    for (i, bound) in h
                        .bounds()
                        .iter()
                        .map(|b| b.to_string())
                        .chain(["+Inf".to_owned()])
                        .enumerate()
                    {
                        total += h.0.counts[i].load(Ordering::Relaxed);
                        let _ = writeln!(
                            out,
                            "{}_bucket{{{}{sep}le=\"{bound}\"}} {total}",
                            e.prom, e.labels
                        );
                    }
                    let labels = format!("{{{}}}", e.labels);
                    let _ = writeln!(out, "{}_sum{labels} {}", e.prom, h.sum_ms());
                    let _ = writeln!(out, "{}_count{labels} {total}", e.prom);
                    continue;
                }
            };
            if *e.prom != *last {
                let _ = writeln!(out, "# TYPE {} {kind}", e.prom);
                last = &e.prom;
            }
            let _ = writeln!(out, "{}{{{}}} {v}", e.prom, e.labels);
        }
        out
    }
}

/// The Prometheus name and labels Envoy's default tag extractors make of `flat`.
#[allow(
    clippy::expect_used,
    reason = "the built-in extractors are constant and tested"
)]
fn default_tags(flat: &str) -> (String, Vec<(String, String)>) {
    static DEFAULT: std::sync::OnceLock<super::tags::TagProducer> = std::sync::OnceLock::new();
    let producer = DEFAULT.get_or_init(|| {
        super::tags::TagProducer::new(true, &[]).expect("the built-in extractors compile")
    });
    let (name, tags) = producer.produce(flat);
    let tags = tags
        .into_iter()
        .map(|(k, v)| (super::naming::sanitize(&k), v))
        .collect();
    (format!("envoy_{name}"), tags)
}

/// Envoy's sanitizing: every character outside `[a-zA-Z0-9_]` becomes `_`.
fn prom_name(name: &str, out: &mut String) {
    let valid = |c: char| c.is_ascii_alphanumeric() || c == '_';
    if name.bytes().all(|b| valid(char::from(b))) {
        out.push_str(name);
        return;
    }
    out.extend(name.chars().map(|c| if valid(c) { c } else { '_' }));
}

fn render_labels(labels: &[(&str, &str)], out: &mut String) {
    for (i, (k, v)) in labels.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(k);
        out.push_str("=\"");
        if !v.contains(['\\', '"', '\n']) {
            out.push_str(v);
            out.push('"');
            continue;
        }
        for c in v.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '"' => out.push_str("\\\""),
                '\n' => out.push_str("\\n"),
                c => out.push(c),
            }
        }
        out.push('"');
    }
}

/// A histogram made on first use (Envoy's `upstream_rq_time` appears once recorded).
pub struct LazyHistogram {
    store: Arc<Store>,
    flat: String,
    prom: String,
    labels: Vec<(&'static str, String)>,
    made: std::sync::OnceLock<Histogram>,
}

impl std::fmt::Debug for LazyHistogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LazyHistogram")
            .field("flat", &self.flat)
            .finish()
    }
}

impl LazyHistogram {
    pub fn new(
        store: &Arc<Store>,
        flat: String,
        prom: String,
        labels: Vec<(&'static str, String)>,
    ) -> Self {
        LazyHistogram {
            store: store.clone(),
            flat,
            prom,
            labels,
            made: std::sync::OnceLock::new(),
        }
    }

    pub fn record(&self, d: std::time::Duration) {
        self.made
            .get_or_init(|| {
                let labels: Vec<(&str, &str)> =
                    self.labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
                self.store.histogram(self.flat.clone(), &self.prom, &labels)
            })
            .record(d);
    }
}

/// The key of `<stem>_completed` among a [`CodeCounters`]' codes (classes are 1..=5).
const COMPLETED: u16 = 0;

/// Per-status-code counters created on first use, as Envoy's `upstream_rq_200` and
/// `upstream_rq_2xx`: a lock-free read of the codes seen so far, a lock only to add one.
pub struct CodeCounters {
    store: Arc<Store>,
    /// Flat prefix with trailing dot, e.g. `cluster.backend.` and the stat stem
    /// (`upstream_rq`), the Prometheus stem and the scope label.
    flat_prefix: String,
    stem: &'static str,
    prom_stem: String,
    /// The labels every counter carries (Envoy's scope tags), after the code's.
    scope: Vec<(&'static str, String)>,
    seen: ArcSwap<Vec<(u16, Counter)>>,
    add: Mutex<()>,
}

impl std::fmt::Debug for CodeCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CodeCounters")
            .field("prefix", &self.flat_prefix)
            .finish()
    }
}

impl CodeCounters {
    pub fn new(
        store: &Arc<Store>,
        flat_prefix: String,
        stem: &'static str,
        prom_stem: String,
        scope: Vec<(&'static str, String)>,
    ) -> Self {
        CodeCounters {
            store: store.clone(),
            flat_prefix,
            stem,
            prom_stem,
            scope,
            seen: ArcSwap::from_pointee(Vec::new()),
            add: Mutex::new(()),
        }
    }

    /// Counts one response: `<stem>_<code>` and `<stem>_<class>xx`. Classes are keyed
    /// as codes 1..=5 in the same list.
    pub fn record(&self, code: u16) {
        let seen = self.seen.load();
        let find = |key: u16| seen.iter().find(|(k, _)| *k == key).map(|(_, c)| c);
        if let (Some(exact), Some(class)) = (find(code), find(code / 100)) {
            exact.inc();
            class.inc();
            return;
        }
        drop(seen);
        self.get(code).inc();
        self.get(code / 100).inc();
    }

    /// Counts one response as [`record`](Self::record) does, and in
    /// `<stem>_completed` too (Envoy's basic response stats, as under `retry.`).
    pub fn record_completed(&self, code: u16) {
        self.record(code);
        self.get(COMPLETED).inc();
    }

    fn get(&self, key: u16) -> Counter {
        if let Some((_, c)) = self.seen.load().iter().find(|(k, _)| *k == key) {
            return c.clone();
        }
        let _guard = self.add.locked();
        if let Some((_, c)) = self.seen.load().iter().find(|(k, _)| *k == key) {
            return c.clone();
        }
        fn with<'a>(
            first: Option<(&'static str, &'a str)>,
            scope: &'a [(&'static str, String)],
        ) -> Vec<(&'a str, &'a str)> {
            first
                .into_iter()
                .chain(scope.iter().map(|(k, v)| (*k, v.as_str())))
                .collect()
        }
        let c = if key == COMPLETED {
            self.store.counter(
                format!("{}{}_completed", self.flat_prefix, self.stem),
                &format!("{}_completed", self.prom_stem),
                &with(None, &self.scope),
            )
        } else if key < 10 {
            let class = key.to_string();
            self.store.counter(
                format!("{}{}_{class}xx", self.flat_prefix, self.stem),
                &format!("{}_xx", self.prom_stem),
                &with(Some(("envoy_response_code_class", &class)), &self.scope),
            )
        } else {
            let code = key.to_string();
            self.store.counter(
                format!("{}{}_{code}", self.flat_prefix, self.stem),
                &self.prom_stem,
                &with(Some(("envoy_response_code", &code)), &self.scope),
            )
        };
        let mut next = (**self.seen.load()).clone();
        next.push((key, c.clone()));
        self.seen.store(Arc::new(next));
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_envoy_flat_and_prometheus_names() {
        let store = Store::new();
        let c = store.counter(
            "cluster.a\"b.upstream_rq_total".into(),
            "envoy_cluster_upstream_rq_total",
            &[("envoy_cluster_name", "a\"b")],
        );
        c.add(3);
        let codes = CodeCounters::new(
            &store,
            "cluster.x.".into(),
            "upstream_rq",
            "envoy_cluster_upstream_rq".into(),
            vec![("envoy_cluster_name", "x".into())],
        );
        codes.record(200);
        codes.record(204);
        codes.record(200);
        let text = store.render_text(&Filter::default());
        assert!(text.contains("cluster.x.upstream_rq_200: 2\n"), "{text}");
        assert!(text.contains("cluster.x.upstream_rq_2xx: 3\n"), "{text}");
        let prom = store.render_prometheus(&Filter::default());
        assert!(
            prom.contains("# TYPE envoy_cluster_upstream_rq counter\n"),
            "{prom}"
        );
        assert!(
            prom.contains(
                "envoy_cluster_upstream_rq{envoy_response_code=\"200\",envoy_cluster_name=\"x\"} 2\n"
            ),
            "{prom}"
        );
        assert!(
            prom.contains(
                "envoy_cluster_upstream_rq_xx{envoy_response_code_class=\"2\",envoy_cluster_name=\"x\"} 3\n"
            ),
            "{prom}"
        );
        assert!(
            prom.contains("envoy_cluster_upstream_rq_total{envoy_cluster_name=\"a\\\"b\"} 3\n")
        );
    }

    #[test]
    fn names_are_sanitized_and_label_values_escaped_only_where_needed() {
        let mut out = String::new();
        prom_name("envoy_http_rq_total", &mut out);
        assert_eq!(out, "envoy_http_rq_total");
        out.clear();
        prom_name("envoy_listener.0.0.0.0_80-x", &mut out);
        assert_eq!(out, "envoy_listener_0_0_0_0_80_x");
        out.clear();
        render_labels(&[("a", "plain"), ("b", "q\"s\\l\nn")], &mut out);
        assert_eq!(out, r#"a="plain",b="q\"s\\l\nn""#);
    }

    #[test]
    fn names_and_labels_are_stored_once() {
        let store = Store::new();
        for cluster in ["a", "b"] {
            for stat in ["upstream_rq_total", "upstream_cx_total"] {
                store.counter(
                    format!("cluster.{cluster}.{stat}"),
                    &format!("envoy_cluster_{stat}"),
                    &[("envoy_cluster_name", cluster)],
                );
            }
        }
        let entries = store.entries.locked();
        let [a_rq, a_cx, b_rq, _] = &entries.list[..] else {
            panic!("four stats");
        };
        assert!(Arc::ptr_eq(&a_rq.prom, &b_rq.prom));
        assert!(Arc::ptr_eq(&a_rq.labels, &a_cx.labels));
        assert!(!Arc::ptr_eq(&a_rq.labels, &b_rq.labels));
        assert!(Arc::ptr_eq(
            &entries.list[0].flat,
            entries
                .by_flat
                .get_key_value("cluster.a.upstream_rq_total")
                .unwrap()
                .0
        ));
        assert_eq!(entries.shared.len(), 4, "two names, two label sets");
    }

    #[test]
    fn stats_nothing_holds_are_released() {
        let store = Store::new();
        let scope = |name: &str| {
            let c = store.counter(
                format!("cluster.{name}.upstream_rq_total"),
                "envoy_cluster_upstream_rq_total",
                &[("envoy_cluster_name", name)],
            );
            let h = store.histogram(format!("cluster.{name}.update_duration"), "d", &[]);
            (c, h)
        };
        let (a, a_h) = scope("a");
        let (b, _b_h) = scope("b");
        a.add(2);
        b.add(3);
        assert_eq!(store.release_unheld(), 0, "everything is held");
        drop((a, a_h));
        assert_eq!(store.release_unheld(), 2);
        let text = store.render_text(&Filter::default());
        assert!(!text.contains("cluster.a."), "{text}");
        assert!(text.contains("cluster.b.upstream_rq_total: 3\n"), "{text}");
        {
            let entries = store.entries.locked();
            assert_eq!(entries.list.len(), 2);
            // Two Prometheus names, b's labels and the empty label set: a's went.
            assert_eq!(entries.shared.len(), 4);
        }
        // The index still finds what stayed; what went starts again from zero.
        assert_eq!(scope("b").0.get(), 3);
        assert_eq!(scope("a").0.get(), 0);
    }

    #[test]
    fn same_flat_name_shares_one_counter() {
        let store = Store::new();
        let a = store.counter("x.y".into(), "x_y", &[]);
        let b = store.counter("x.y".into(), "x_y", &[]);
        a.inc();
        assert_eq!(b.get(), 1);
    }
}
