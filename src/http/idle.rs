//! A route's `idle_timeout` (Envoy's per-route stream idle timeout): the stream ends
//! when neither the request nor the response has moved for that long — a 504
//! `stream timeout` (flag `SI`) before response headers, as Envoy answers, a reset
//! after them.
use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::time::Instant;

/// When the stream last moved, shared by its request and response bodies.
#[derive(Debug, Clone)]
pub struct Activity {
    base: Instant,
    /// Milliseconds since `base` of the last activity.
    last: Arc<AtomicU64>,
    pub timeout: Duration,
}

impl Activity {
    pub fn new(timeout: Duration) -> Self {
        Activity {
            base: Instant::now(),
            last: Arc::new(AtomicU64::new(0)),
            timeout,
        }
    }

    pub fn touch(&self) {
        let ms = self.base.elapsed().as_millis() as u64;
        self.last.fetch_max(ms, Ordering::Relaxed);
    }

    /// When the stream times out unless it moves before.
    pub fn deadline(&self) -> Instant {
        self.base + Duration::from_millis(self.last.load(Ordering::Relaxed)) + self.timeout
    }

    /// Resolves once the stream has been idle for the timeout.
    pub async fn expired(&self) {
        loop {
            let deadline = self.deadline();
            tokio::time::sleep_until(deadline).await;
            if self.deadline() <= Instant::now() {
                return;
            }
        }
    }
}

impl super::body::Observer for Activity {
    fn data(&mut self, _bytes: usize) {
        self.touch();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn expires_only_after_a_quiet_timeout() {
        let a = Activity::new(Duration::from_secs(1));
        let start = Instant::now();
        let toucher = {
            let a = a.clone();
            tokio::spawn(async move {
                for _ in 0..3 {
                    tokio::time::sleep(Duration::from_millis(600)).await;
                    a.touch();
                }
            })
        };
        a.expired().await;
        // Touched at 0.6, 1.2 and 1.8 s: quiet from 1.8 s, so it expires at 2.8 s.
        assert_eq!(start.elapsed(), Duration::from_millis(2800));
        toucher.await.unwrap();
    }
}
