use super::*;

#[test]
fn counters_are_latched_and_histograms_report_their_interval() {
    let store = Store::new();
    let c = store.counter("a.count".into(), "envoy_a_count", &[]);
    let unused = store.counter("a.unused".into(), "envoy_a_unused", &[]);
    let g = store.gauge("a.gauge".into(), "envoy_a_gauge", &[]);
    let h = store.histogram("a.time".into(), "envoy_a_time", &[]);
    let mut latches = Latches::default();

    c.add(3);
    g.set(7);
    h.record(Duration::from_millis(2));
    let s = latches.snapshot(&store);
    assert_eq!(s.counters, vec![("a.count".into(), 3, 3)]);
    assert_eq!(s.gauges, vec![("a.gauge".into(), 7)]);
    assert_eq!(s.histograms.len(), 1);
    assert_eq!(s.histograms[0].count(), 1);
    assert_eq!(s.histograms[0].sum, 2.0);

    // Nothing new: the counter is still reported (used), with a zero delta; the
    // histogram with an empty interval.
    let s = latches.snapshot(&store);
    assert_eq!(s.counters, vec![("a.count".into(), 3, 0)]);
    assert_eq!(s.histograms[0].count(), 0);
    assert_eq!(s.histograms[0].sum, 0.0);

    c.inc();
    h.record(Duration::from_millis(20));
    h.record(Duration::from_millis(30));
    let s = latches.snapshot(&store);
    assert_eq!(s.counters, vec![("a.count".into(), 4, 1)]);
    assert_eq!(s.histograms[0].count(), 2);
    assert_eq!(s.histograms[0].sum, 50.0);
    drop(unused);
}

#[test]
fn a_counter_made_again_starts_over() {
    let store = Store::new();
    let mut latches = Latches::default();
    let c = store.counter("x.n".into(), "envoy_x_n", &[]);
    c.add(10);
    latches.snapshot(&store);
    drop(c);
    store.release_unheld();
    let c = store.counter("x.n".into(), "envoy_x_n", &[]);
    c.add(2);
    let s = latches.snapshot(&store);
    assert_eq!(s.counters, vec![("x.n".into(), 2, 2)]);
}
