//! Circuit breakers: a cluster's open connections, pending requests, active requests and
//! retries, counted against its thresholds across all workers (Envoy's resource manager
//! is shared by its workers too). A slot is held for as long as the resource is used and
//! given back when dropped; `circuit_breakers.default.*_open` say which limit is reached
//! and, with `track_remaining`, `remaining_*` how far each is from it.
use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use crate::{
    config::Limits,
    telemetry::stats::{Gauge, Store},
};

#[derive(Debug)]
pub struct Breakers {
    pub connections: Resource,
    pub pending: Resource,
    pub requests: Resource,
    pub retries: Resource,
}

impl Breakers {
    /// The DEFAULT priority's thresholds (routes at HIGH priority are not supported).
    pub fn new(limits: &Limits, track_remaining: bool, store: &Store, cluster: &str) -> Self {
        let r = |max: u32, open: &str, remaining: &str| {
            Resource::new(
                u64::from(max),
                gauge(store, cluster, open),
                track_remaining.then(|| gauge(store, cluster, remaining)),
                false,
            )
        };
        // tcp_proxy connections wait for a connection slot to be given back.
        let connections = Resource::new(
            u64::from(limits.max_connections),
            gauge(store, cluster, "cx_open"),
            track_remaining.then(|| gauge(store, cluster, "remaining_cx")),
            true,
        );
        Breakers {
            connections,
            pending: r(
                limits.max_pending_requests,
                "rq_pending_open",
                "remaining_pending",
            ),
            requests: r(limits.max_requests, "rq_open", "remaining_rq"),
            retries: r(limits.max_retries, "rq_retry_open", "remaining_retries"),
        }
    }
}

fn gauge(store: &Store, cluster: &str, stat: &str) -> Gauge {
    store.gauge(
        ["cluster.", cluster, ".circuit_breakers.default.", stat].concat(),
        &["envoy_cluster_circuit_breakers_default_", stat].concat(),
        &[("envoy_cluster_name", cluster)],
    )
}

/// One limited resource.
#[derive(Debug)]
pub struct Resource {
    state: Arc<State>,
}

#[derive(Debug)]
struct State {
    used: AtomicU64,
    max: AtomicU64,
    open: Gauge,
    remaining: Option<Gauge>,
    /// Told on every release, for a caller waiting for a free slot (only resources
    /// something waits on: a request's release need not pay for it).
    released: Option<tokio::sync::Notify>,
}

/// A unit of a resource in use; given back when dropped.
#[derive(Debug)]
pub struct Slot(Arc<State>);

impl Resource {
    fn new(max: u64, open: Gauge, remaining: Option<Gauge>, waited_on: bool) -> Self {
        let state = State {
            used: AtomicU64::new(0),
            max: AtomicU64::new(max),
            open,
            remaining,
            released: waited_on.then(tokio::sync::Notify::new),
        };
        state.update(0);
        Resource {
            state: Arc::new(state),
        }
    }

    /// A slot if one is free.
    pub fn try_acquire(&self) -> Option<Slot> {
        self.try_acquire_within(self.max())
    }

    /// A slot if fewer than `max` are in use (a retry budget computes its own limit).
    pub fn try_acquire_within(&self, max: u64) -> Option<Slot> {
        let s = &self.state;
        let mut used = s.used.load(Ordering::Relaxed);
        loop {
            if used >= max {
                return None;
            }
            match s
                .used
                .compare_exchange_weak(used, used + 1, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => break,
                Err(now) => used = now,
            }
        }
        s.update(used + 1);
        Some(Slot(s.clone()))
    }

    /// A slot whatever the limit: Envoy lets a worker's pool with no connection to a
    /// host open one, so that its pending requests are never stranded.
    pub fn acquire_anyway(&self) -> Slot {
        let used = self.state.used.fetch_add(1, Ordering::Relaxed) + 1;
        self.state.update(used);
        Slot(self.state.clone())
    }

    /// Waits for a slot to be given back (then try again: another may take it first).
    pub async fn released(&self) {
        match &self.state.released {
            Some(n) => n.notified().await,
            None => std::future::pending().await,
        }
    }

    pub fn can_acquire(&self) -> bool {
        self.used() < self.max()
    }

    pub fn used(&self) -> u64 {
        self.state.used.load(Ordering::Relaxed)
    }

    pub fn max(&self) -> u64 {
        self.state.max.load(Ordering::Relaxed)
    }
}

impl State {
    fn update(&self, used: u64) {
        let max = self.max.load(Ordering::Relaxed);
        self.open.set(i64::from(used >= max));
        if let Some(r) = &self.remaining {
            r.set(max.saturating_sub(used).min(i64::MAX as u64) as i64);
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let used = self.0.used.fetch_sub(1, Ordering::Relaxed) - 1;
        self.0.update(used);
        if let Some(n) = &self.0.released {
            n.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_limited_and_given_back() {
        let store = Store::new();
        let limits = Limits {
            max_connections: 2,
            ..Default::default()
        };
        let b = Breakers::new(&limits, true, &store, "c");
        let a = b.connections.try_acquire().unwrap();
        let open = store.gauge(
            "cluster.c.circuit_breakers.default.cx_open".into(),
            "envoy_cluster_circuit_breakers_default_cx_open",
            &[("envoy_cluster_name", "c")],
        );
        let remaining = store.gauge(
            "cluster.c.circuit_breakers.default.remaining_cx".into(),
            "envoy_cluster_circuit_breakers_default_remaining_cx",
            &[("envoy_cluster_name", "c")],
        );
        assert_eq!((open.get(), remaining.get()), (0, 1));
        let second = b.connections.try_acquire().unwrap();
        assert!(b.connections.try_acquire().is_none());
        assert_eq!((open.get(), remaining.get()), (1, 0));
        let forced = b.connections.acquire_anyway();
        assert_eq!(b.connections.used(), 3);
        drop((a, second, forced));
        assert_eq!((open.get(), remaining.get()), (0, 2));
        assert!(b.connections.can_acquire());
    }
}
