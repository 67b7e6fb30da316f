//! The upstream connection idle timeout (`common_http_protocol_options.idle_timeout`,
//! Envoy's default 1 h): a connection that has carried no request for that long is
//! closed, and counted in `upstream_cx_idle_timeout`.
use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::time::Instant;

/// When a connection's last request ended, and how many it carries now.
#[derive(Debug)]
pub struct Idle {
    base: Instant,
    /// Milliseconds since `base` at which the connection last became idle.
    since: AtomicU64,
    streams: AtomicUsize,
    timeout: Duration,
}

impl Idle {
    pub fn new(timeout: Duration) -> Arc<Self> {
        Arc::new(Idle {
            base: Instant::now(),
            since: AtomicU64::new(0),
            streams: AtomicUsize::new(0),
            timeout,
        })
    }

    /// Marks a request on the connection, until the returned guard drops.
    pub fn busy(self: &Arc<Self>) -> Busy {
        self.streams.fetch_add(1, Ordering::Relaxed);
        Busy(self.clone())
    }

    /// Resolves once the connection has carried no request for the timeout.
    pub async fn expired(&self) {
        loop {
            let since = Duration::from_millis(self.since.load(Ordering::Relaxed));
            tokio::time::sleep_until(self.base + since + self.timeout).await;
            let now = self.base.elapsed();
            let since = Duration::from_millis(self.since.load(Ordering::Relaxed));
            if self.streams.load(Ordering::Relaxed) == 0 && now >= since + self.timeout {
                return;
            }
            if self.streams.load(Ordering::Relaxed) > 0 {
                // Busy: look again a timeout later (it cannot expire before).
                tokio::time::sleep(self.timeout).await;
            }
        }
    }
}

/// A request in progress on a connection.
#[derive(Debug)]
pub struct Busy(Arc<Idle>);

impl Drop for Busy {
    fn drop(&mut self) {
        let idle = &self.0;
        let ms = idle.base.elapsed().as_millis() as u64;
        idle.since.fetch_max(ms, Ordering::Relaxed);
        idle.streams.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn expires_a_timeout_after_the_last_request_ends() {
        let idle = Idle::new(Duration::from_secs(10));
        let start = Instant::now();
        let busy = idle.busy();
        let i = idle.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(25)).await;
            drop(busy);
            drop(i);
        });
        idle.expired().await;
        // Busy until 25 s, then idle for 10 s.
        assert_eq!(start.elapsed(), Duration::from_secs(35));
    }
}
