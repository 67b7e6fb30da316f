//! Readiness as `/healthz/ready` and admin `/ready` report it: ready once every listener
//! is bound and the config is applied, not ready while draining or after
//! `POST /healthcheck/fail`.
use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Debug, Default)]
pub struct Readiness {
    initialized: AtomicBool,
    draining: AtomicBool,
    failed: AtomicBool,
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
    pub fn set_initialized(&self) {
        self.initialized.store(true, Ordering::Release);
    }
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }
    pub fn set_failed(&self, failed: bool) {
        self.failed.store(failed, Ordering::Release);
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
}
