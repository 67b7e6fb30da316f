//! The global downstream connection limit: the `overload_manager`'s
//! `envoy.resource_monitors.global_downstream_max_connections` monitor (Istio's
//! bootstrap sets one), or the deprecated runtime key
//! `overload.global_downstream_max_connections`. Every accepted connection of a listener
//! that neither `ignore_global_conn_limit` nor `bypass_overload_manager` counts; one
//! over the limit is closed at once and counted in the listener's
//! `downstream_global_cx_overflow`, as in Envoy.
use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

#[derive(Debug, Default)]
pub struct ConnLimit {
    max: Option<u64>,
    active: AtomicU64,
}

/// One counted connection; dropping it frees its place.
#[derive(Debug)]
pub struct Permit(Option<Arc<ConnLimit>>);

impl Permit {
    /// A place on an exempt listener: nothing counted.
    pub fn none() -> Self {
        Permit(None)
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(l) = &self.0 {
            l.active.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl ConnLimit {
    pub fn new(max: Option<u64>) -> Arc<Self> {
        Arc::new(ConnLimit {
            max,
            active: AtomicU64::new(0),
        })
    }

    /// A place for one more connection, or `None` when the limit is reached. Without a
    /// limit nothing is counted.
    pub fn acquire(self: &Arc<Self>) -> Option<Permit> {
        let Some(max) = self.max else {
            return Some(Permit(None));
        };
        let mut now = self.active.load(Ordering::Acquire);
        loop {
            if now >= max {
                return None;
            }
            match self.active.compare_exchange_weak(
                now,
                now + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Some(Permit(Some(self.clone()))),
                Err(n) => now = n,
            }
        }
    }

    pub fn active(&self) -> u64 {
        self.active.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_taken_and_given_back() {
        let l = ConnLimit::new(Some(2));
        let a = l.acquire().unwrap();
        let _b = l.acquire().unwrap();
        assert!(l.acquire().is_none());
        drop(a);
        assert!(l.acquire().is_some());
        let unlimited = ConnLimit::new(None);
        let held: Vec<_> = (0..1000).map(|_| unlimited.acquire().unwrap()).collect();
        assert_eq!(unlimited.active(), 0);
        drop(held);
    }
}
