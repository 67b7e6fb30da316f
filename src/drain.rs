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
    /// A [`Scoped`] drain this watch also follows (its listener was replaced or removed).
    scope: Option<watch::Receiver<bool>>,
    shared: Arc<Shared>,
}

/// The drain of one part of the process: a listener that LDS replaced or removed. Its
/// connections drain when it is signaled or when the whole process drains, and they
/// still count toward the process's drain.
#[derive(Debug)]
pub struct Scoped {
    tx: watch::Sender<bool>,
    watch: Watch,
}

impl Scoped {
    pub fn signal(&self) {
        let _ = self.tx.send(true);
    }

    pub fn watch(&self) -> &Watch {
        &self.watch
    }
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
        Watch {
            rx,
            scope: None,
            shared,
        },
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
    /// Resolves once the drain (of the process, or of this watch's scope) has started.
    pub async fn signaled(&mut self) {
        let Some(scope) = &mut self.scope else {
            let _ = self.rx.wait_for(|d| *d).await;
            return;
        };
        let scoped = async {
            // A scope whose owner is gone never drains by itself.
            if scope.wait_for(|d| *d).await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            _ = self.rx.wait_for(|d| *d) => {}
            _ = scoped => {}
        }
    }

    /// [`Watch::signaled`] for a `select!` next to a busy connection, which polls it on
    /// every wake of the task: once its first poll has registered the task for the
    /// drain signal, later polls only read the flags until the drain has started.
    pub fn signaled_quietly(&mut self) -> impl Future<Output = ()> + '_ {
        let probe = self.clone();
        let mut signaled = Box::pin(self.signaled());
        let mut registered = false;
        std::future::poll_fn(move |cx| {
            if registered && !probe.is_draining() {
                return std::task::Poll::Pending;
            }
            registered = true;
            signaled.as_mut().poll(cx)
        })
    }

    pub fn is_draining(&self) -> bool {
        *self.rx.borrow() || self.scope.as_ref().is_some_and(|s| *s.borrow())
    }

    /// True when the whole process drains (not only this watch's scope).
    pub fn is_process_draining(&self) -> bool {
        *self.rx.borrow()
    }

    /// A drain scope under this one (for one listener).
    pub fn scoped(&self) -> Scoped {
        let (tx, rx) = watch::channel(false);
        Scoped {
            tx,
            watch: Watch {
                rx: self.rx.clone(),
                scope: Some(rx),
                shared: self.shared.clone(),
            },
        }
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
    async fn a_scope_drains_alone_or_with_the_process() {
        let (trigger, watch) = channel();
        let a = watch.scoped();
        let b = watch.scoped();
        let guard = a.watch().connection();
        a.signal();
        let mut wa = a.watch().clone();
        wa.signaled().await;
        assert!(!b.watch().is_draining());
        assert_eq!(
            trigger.active(),
            1,
            "scoped connections count for the process"
        );
        drop(guard);
        let mut wb = b.watch().clone();
        let waiting = tokio::spawn(async move { wb.signaled().await });
        assert_eq!(trigger.drain(Duration::from_secs(1)).await, 0);
        waiting.await.unwrap();
    }

    /// Polled over and over by a busy task (here: a ticking interval in the same
    /// `select!`), the quiet signal still resolves once the scope or the process drains.
    #[tokio::test(start_paused = true)]
    async fn the_quiet_signal_fires_while_its_task_is_busy() {
        let (trigger, watch) = channel();
        let scope = watch.scoped();
        for drain_process in [false, true] {
            let mut w = if drain_process {
                watch.clone()
            } else {
                scope.watch().clone()
            };
            let task = tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(10));
                let signal = w.signaled_quietly();
                tokio::pin!(signal);
                let mut wakes = 0;
                loop {
                    tokio::select! {
                        _ = tick.tick() => wakes += 1,
                        () = &mut signal => return wakes,
                    }
                }
            });
            tokio::time::sleep(Duration::from_secs(1)).await;
            if drain_process {
                let _ = trigger.drain(Duration::from_secs(1)).await;
            } else {
                scope.signal();
            }
            assert!(task.await.unwrap() >= 100);
        }
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
