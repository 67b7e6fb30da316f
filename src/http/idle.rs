//! Idle timers. A stream's (`stream_idle_timeout`, a route's `idle_timeout`): the
//! stream ends when neither the request nor the response has moved for that long — a
//! 504 `stream timeout` (flag `SI`) before response headers, as Envoy answers, a reset
//! after them. A connection's (`common_http_protocol_options.idle_timeout`, downstream
//! and upstream): it closes after that long without a request.
use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
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

/// A connection's idleness (the connection manager's and a cluster's
/// `common_http_protocol_options.idle_timeout`): when a request last started or ended
/// on it, and how many it carries now.
#[derive(Debug)]
pub struct ConnIdle {
    activity: Activity,
    requests: AtomicUsize,
}

impl ConnIdle {
    pub fn new(timeout: Duration) -> Arc<Self> {
        Arc::new(ConnIdle {
            activity: Activity::new(timeout),
            requests: AtomicUsize::new(0),
        })
    }

    /// Marks a request on the connection until the returned guard drops.
    pub fn busy(self: &Arc<Self>) -> Busy {
        self.activity.touch();
        self.requests.fetch_add(1, Ordering::Relaxed);
        Busy(self.clone())
    }

    /// Whether a request is in progress on the connection.
    pub fn is_busy(&self) -> bool {
        self.requests.load(Ordering::Relaxed) > 0
    }

    /// Resolves once the connection has carried no request for the timeout.
    pub async fn expired(&self) {
        loop {
            self.activity.expired().await;
            if self.requests.load(Ordering::Relaxed) == 0 {
                return;
            }
            // Busy: it cannot expire before a timeout after its last request ends.
            self.activity.touch();
        }
    }
}

/// A request in progress on a connection.
#[derive(Debug)]
pub struct Busy(Arc<ConnIdle>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.activity.touch();
        self.0.requests.fetch_sub(1, Ordering::Relaxed);
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

    #[tokio::test(start_paused = true)]
    async fn a_connection_expires_a_timeout_after_its_last_request_ends() {
        let idle = ConnIdle::new(Duration::from_secs(10));
        let start = Instant::now();
        let busy = idle.busy();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(25)).await;
            drop(busy);
        });
        idle.expired().await;
        // Busy until 25 s, then idle for 10 s.
        assert_eq!(start.elapsed(), Duration::from_secs(35));
    }
}
