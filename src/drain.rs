//! Graceful drain: one trigger, many watchers. Listeners stop accepting, connections
//! finish in-flight work (h2 GOAWAY, `connection: close` on HTTP/1) and report when they
//! are gone, so the process can exit when the count reaches zero or the deadline passes.
use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::sync::{Notify, watch};

#[derive(Debug)]
struct Shared {
    active: AtomicUsize,
    idle: Notify,
}

/// Starts the drain and waits for it.
#[derive(Debug, Clone)]
pub struct Trigger {
    tx: Arc<watch::Sender<bool>>,
    shared: Arc<Shared>,
}

/// Held by listeners and connections: tells them when to drain.
#[derive(Debug, Clone)]
pub struct Watch {
    rx: watch::Receiver<bool>,
    shared: Arc<Shared>,
}

/// One open connection; dropping it lets the drain complete.
#[derive(Debug)]
pub struct ConnectionGuard(Arc<Shared>);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        if self.0.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

pub fn channel() -> (Trigger, Watch) {
    let (tx, rx) = watch::channel(false);
    let shared = Arc::new(Shared {
        active: AtomicUsize::new(0),
        idle: Notify::new(),
    });
    (
        Trigger {
            tx: Arc::new(tx),
            shared: shared.clone(),
        },
        Watch { rx, shared },
    )
}

impl Trigger {
    /// Signals every watcher, then waits until all connections are closed or `deadline`
    /// passes. Returns the number of connections still open.
    pub async fn drain(&self, deadline: Duration) -> usize {
        let _ = self.tx.send(true);
        let wait = async {
            loop {
                let notified = self.shared.idle.notified();
                if self.shared.active.load(Ordering::Acquire) == 0 {
                    return;
                }
                notified.await;
            }
        };
        let _ = tokio::time::timeout(deadline, wait).await;
        self.shared.active.load(Ordering::Acquire)
    }

    pub fn is_draining(&self) -> bool {
        *self.tx.borrow()
    }

    pub fn active(&self) -> usize {
        self.shared.active.load(Ordering::Acquire)
    }
}

impl Watch {
    /// Resolves once the drain has started.
    pub async fn signaled(&mut self) {
        let _ = self.rx.wait_for(|d| *d).await;
    }

    pub fn is_draining(&self) -> bool {
        *self.rx.borrow()
    }

    pub fn connection(&self) -> ConnectionGuard {
        self.shared.active.fetch_add(1, Ordering::AcqRel);
        ConnectionGuard(self.shared.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn drain_waits_for_connections_then_returns() {
        let (trigger, watch) = channel();
        let guard = watch.connection();
        let mut w = watch.clone();
        let task = tokio::spawn(async move {
            w.signaled().await;
            tokio::time::sleep(Duration::from_secs(2)).await;
            drop(guard);
        });
        assert_eq!(trigger.drain(Duration::from_secs(10)).await, 0);
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn drain_gives_up_at_the_deadline() {
        let (trigger, watch) = channel();
        let _guard = watch.connection();
        let start = tokio::time::Instant::now();
        assert_eq!(trigger.drain(Duration::from_secs(5)).await, 1);
        assert_eq!(start.elapsed(), Duration::from_secs(5));
    }
}
