//! Readiness as `/healthz/ready` and admin `/ready` report it: ready once every listener
//! is bound and the config is applied, not ready while draining or after
//! `POST /healthcheck/fail`.
use std::sync::{
    OnceLock,
    atomic::{AtomicBool, Ordering},
};

use crate::telemetry::stats::Gauge;

#[derive(Debug, Default)]
pub struct Readiness {
    initialized: AtomicBool,
    draining: AtomicBool,
    failed: AtomicBool,
    /// `server.state` and `listener_manager.workers_started`, kept in step: pilot-agent
    /// decides a sidecar is ready from these two stats, not from `/ready`.
    stats: OnceLock<(Gauge, Gauge)>,
}

/// Envoy's server states as `/ready` names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Live,
    Draining,
    Initializing,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Live => "LIVE",
            State::Draining => "DRAINING",
            State::Initializing => "PRE_INITIALIZING",
        }
    }
}

impl Readiness {
    /// Reports the state in `server.state` (Envoy's numbers: 0 live, 1 draining, 2
    /// pre-initializing) and `listener_manager.workers_started` (1 once initialized:
    /// Envoy starts its workers when the first config is in).
    pub fn report_to(&self, state: Gauge, workers_started: Gauge) {
        let _ = self.stats.set((state, workers_started));
        self.publish();
    }

    fn publish(&self) {
        if let Some((state, workers)) = self.stats.get() {
            state.set(match self.state() {
                State::Live => 0,
                State::Draining => 1,
                State::Initializing => 2,
            });
            if self.initialized.load(Ordering::Acquire) {
                workers.set(1);
            }
        }
    }

    pub fn set_initialized(&self) {
        self.initialized.store(true, Ordering::Release);
        self.publish();
    }
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Release);
        self.publish();
    }
    pub fn set_failed(&self, failed: bool) {
        self.failed.store(failed, Ordering::Release);
        self.publish();
    }
    pub fn state(&self) -> State {
        if !self.initialized.load(Ordering::Acquire) {
            State::Initializing
        } else if self.draining.load(Ordering::Acquire) || self.failed.load(Ordering::Acquire) {
            State::Draining
        } else {
            State::Live
        }
    }
    pub fn is_ready(&self) -> bool {
        self.state() == State::Live
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_initialized_and_not_draining_or_failed() {
        let r = Readiness::default();
        assert_eq!(r.state(), State::Initializing);
        r.set_initialized();
        assert!(r.is_ready());
        r.set_failed(true);
        assert_eq!(r.state(), State::Draining);
        r.set_failed(false);
        assert!(r.is_ready());
        r.set_draining();
        assert!(!r.is_ready());
    }

    #[test]
    fn the_stats_pilot_agent_reads_follow_the_state() {
        let r = Readiness::default();
        let (state, workers) = (Gauge::default(), Gauge::default());
        r.report_to(state.clone(), workers.clone());
        assert_eq!((state.get(), workers.get()), (2, 0));
        r.set_initialized();
        assert_eq!((state.get(), workers.get()), (0, 1));
        r.set_failed(true);
        assert_eq!(state.get(), 1);
        r.set_failed(false);
        r.set_draining();
        assert_eq!((state.get(), workers.get()), (1, 1));
    }
}
