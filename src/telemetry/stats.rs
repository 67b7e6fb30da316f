//! Envoy-style stats: counters and gauges with Envoy's flat names (`/stats`) and the
//! tag-extracted Prometheus names Envoy publishes (`/stats/prometheus`).
//!
//! Handles are resolved when config is compiled; the traffic path only touches
//! atomics. prometheus-client is not used here because its counter encoding always
//! appends `_total`, and Envoy's names (e.g. `envoy_cluster_upstream_rq`) do not.
use std::{
    fmt::Write,
    sync::{
        Arc, Mutex,
        atomic::{AtomicI64, AtomicU64, Ordering},
    },
};

use arc_swap::ArcSwap;

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
pub struct Gauge(Arc<AtomicI64>);

impl Gauge {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
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

#[derive(Debug)]
enum Value {
    Counter(Counter),
    Gauge(Gauge),
}

#[derive(Debug)]
struct Entry {
    /// Envoy's flat name, e.g. `cluster.backend.upstream_rq_200`.
    flat: String,
    /// Prometheus name, e.g. `envoy_cluster_upstream_rq`.
    prom: String,
    /// Rendered labels, e.g. `envoy_response_code="200",envoy_cluster_name="backend"`.
    labels: String,
    value: Value,
}

/// All stats of the process.
#[derive(Debug, Default)]
pub struct Store {
    entries: Mutex<Entries>,
}

#[derive(Debug, Default)]
struct Entries {
    list: Vec<Entry>,
    by_flat: std::collections::HashMap<String, usize>,
}

impl Entries {
    fn find(&self, flat: &str) -> Option<&Value> {
        self.by_flat.get(flat).map(|&i| &self.list[i].value)
    }

    fn push(&mut self, flat: String, prom: &str, labels: &[(&str, &str)], value: Value) {
        self.by_flat.insert(flat.clone(), self.list.len());
        self.list.push(Entry {
            flat,
            prom: prom_name(prom),
            labels: render_labels(labels),
            value,
        });
    }
}

impl Store {
    pub fn new() -> Arc<Self> {
        Arc::new(Store::default())
    }

    /// A counter named `flat` in Envoy's flat form, published to Prometheus as `prom`
    /// with `labels`. Registering the same flat name twice returns the same counter.
    pub fn counter(&self, flat: String, prom: &str, labels: &[(&str, &str)]) -> Counter {
        let mut entries = self.entries.lock().unwrap();
        if let Some(Value::Counter(c)) = entries.find(&flat) {
            return c.clone();
        }
        let c = Counter::default();
        entries.push(flat, prom, labels, Value::Counter(c.clone()));
        c
    }

    pub fn gauge(&self, flat: String, prom: &str, labels: &[(&str, &str)]) -> Gauge {
        let mut entries = self.entries.lock().unwrap();
        if let Some(Value::Gauge(g)) = entries.find(&flat) {
            return g.clone();
        }
        let g = Gauge::default();
        entries.push(flat, prom, labels, Value::Gauge(g.clone()));
        g
    }

    /// Envoy's `/stats` text: `name: value`, sorted by name.
    pub fn render_text(&self) -> String {
        let entries = self.entries.lock().unwrap();
        let mut rows: Vec<(&str, String)> = entries
            .list
            .iter()
            .map(|e| {
                let v = match &e.value {
                    Value::Counter(c) => c.get().to_string(),
                    Value::Gauge(g) => g.get().to_string(),
                };
                (e.flat.as_str(), v)
            })
            .collect();
        rows.sort();
        let mut out = String::with_capacity(rows.len() * 48);
        for (name, v) in rows {
            let _ = writeln!(out, "{name}: {v}");
        }
        out
    }

    /// Prometheus text exposition (version 0.0.4), grouped by metric name.
    pub fn render_prometheus(&self) -> String {
        let entries = self.entries.lock().unwrap();
        let mut order: Vec<&Entry> = entries.list.iter().collect();
        order.sort_by(|a, b| a.prom.cmp(&b.prom).then(a.labels.cmp(&b.labels)));
        let mut out = String::with_capacity(order.len() * 96);
        let mut last = "";
        for e in order {
            let (kind, v) = match &e.value {
                Value::Counter(c) => ("counter", c.get() as i64),
                Value::Gauge(g) => ("gauge", g.get()),
            };
            if e.prom != last {
                let _ = writeln!(out, "# TYPE {} {kind}", e.prom);
                last = &e.prom;
            }
            if e.labels.is_empty() {
                let _ = writeln!(out, "{} {v}", e.prom);
            } else {
                let _ = writeln!(out, "{}{{{}}} {v}", e.prom, e.labels);
            }
        }
        out
    }
}

fn prom_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn render_labels(labels: &[(&str, &str)]) -> String {
    let mut out = String::new();
    for (i, (k, v)) in labels.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(k);
        out.push_str("=\"");
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
    out
}

/// Per-status-code counters created on first use, as Envoy's `upstream_rq_200` and
/// `upstream_rq_2xx`: a lock-free read of the codes seen so far, a lock only to add one.
pub struct CodeCounters {
    store: Arc<Store>,
    /// Flat prefix with trailing dot, e.g. `cluster.backend.` and the stat stem
    /// (`upstream_rq`), the Prometheus stem and the scope label.
    flat_prefix: String,
    stem: &'static str,
    prom_stem: String,
    scope: (&'static str, String),
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
        scope: (&'static str, String),
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

    fn get(&self, key: u16) -> Counter {
        if let Some((_, c)) = self.seen.load().iter().find(|(k, _)| *k == key) {
            return c.clone();
        }
        let _guard = self.add.lock().unwrap();
        if let Some((_, c)) = self.seen.load().iter().find(|(k, _)| *k == key) {
            return c.clone();
        }
        let (scope_k, scope_v) = (self.scope.0, self.scope.1.as_str());
        let c = if key < 10 {
            let class = key.to_string();
            self.store.counter(
                format!("{}{}_{class}xx", self.flat_prefix, self.stem),
                &format!("{}_xx", self.prom_stem),
                &[("envoy_response_code_class", &class), (scope_k, scope_v)],
            )
        } else {
            let code = key.to_string();
            self.store.counter(
                format!("{}{}_{code}", self.flat_prefix, self.stem),
                &self.prom_stem,
                &[("envoy_response_code", &code), (scope_k, scope_v)],
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
            ("envoy_cluster_name", "x".into()),
        );
        codes.record(200);
        codes.record(204);
        codes.record(200);
        let text = store.render_text();
        assert!(text.contains("cluster.x.upstream_rq_200: 2\n"), "{text}");
        assert!(text.contains("cluster.x.upstream_rq_2xx: 3\n"), "{text}");
        let prom = store.render_prometheus();
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
    fn same_flat_name_shares_one_counter() {
        let store = Store::new();
        let a = store.counter("x.y".into(), "x_y", &[]);
        let b = store.counter("x.y".into(), "x_y", &[]);
        a.inc();
        assert_eq!(b.get(), 1);
    }
}
