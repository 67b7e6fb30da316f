//! The traffic workers: one thread each, each running a single-threaded tokio runtime of
//! its own, as Envoy runs one event loop per worker. A connection stays on the worker
//! that accepted it, and so do the upstream connections it opens (the pools keep one
//! set per worker), so proxying a request wakes no other thread (an access-log line
//! goes to its writer on the control runtime).
use std::{
    cell::Cell,
    io,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use tokio::{runtime::Handle, sync::oneshot};

thread_local! {
    static INDEX: Cell<usize> = const { Cell::new(0) };
}

/// The most workers any [`Workers`] of this process has had; per-worker state is sized
/// by it.
static COUNT: AtomicUsize = AtomicUsize::new(1);

/// The index of the worker this thread is; 0 on any other thread.
pub fn current() -> usize {
    INDEX.with(Cell::get)
}

/// How many per-worker slots per-worker state needs.
pub fn count() -> usize {
    COUNT.load(Ordering::Relaxed)
}

#[derive(Debug)]
pub struct Workers {
    handles: Arc<[Handle]>,
    threads: Vec<(oneshot::Sender<()>, JoinHandle<()>)>,
}

impl Workers {
    /// Starts `n` workers (at least one), each with `setup` spawned on it first.
    pub fn start<F>(n: usize, setup: fn() -> F) -> io::Result<Self>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let n = n.max(1);
        COUNT.fetch_max(n, Ordering::Relaxed);
        let mut handles = Vec::with_capacity(n);
        let mut threads = Vec::with_capacity(n);
        for i in 0..n {
            let (handle_tx, handle_rx) = std::sync::mpsc::channel();
            let (stop_tx, stop_rx) = oneshot::channel::<()>();
            let thread = std::thread::Builder::new()
                .name(format!("pilotfish-worker-{i}"))
                .spawn(move || {
                    INDEX.with(|c| c.set(i));
                    let rt = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(rt) => rt,
                        Err(e) => return drop(handle_tx.send(Err(e))),
                    };
                    rt.spawn(setup());
                    let _ = handle_tx.send(Ok(rt.handle().clone()));
                    rt.block_on(async {
                        let _ = stop_rx.await;
                    });
                    rt.shutdown_timeout(Duration::from_millis(100));
                })?;
            let handle = handle_rx
                .recv()
                .map_err(|_| io::Error::other("a worker thread died starting"))??;
            handles.push(handle);
            threads.push((stop_tx, thread));
        }
        Ok(Workers {
            handles: handles.into(),
            threads,
        })
    }

    /// The workers' runtimes, in worker index order.
    pub fn handles(&self) -> Arc<[Handle]> {
        self.handles.clone()
    }

    /// Stops every worker: tasks still running are dropped. A worker that has not
    /// stopped within a second (a task that never yields) is left behind, so the process
    /// can still exit.
    pub fn shutdown(self) {
        let mut threads = Vec::with_capacity(self.threads.len());
        for (stop, thread) in self.threads {
            let _ = stop.send(());
            threads.push(thread);
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(1);
        while threads.iter().any(|t| !t.is_finished()) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        for t in threads.into_iter().filter(|t| t.is_finished()) {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_worker_runs_on_its_own_thread_and_knows_its_index() {
        let workers = Workers::start(2, || async {}).unwrap();
        let seen: Vec<(usize, std::thread::ThreadId)> = workers
            .handles()
            .iter()
            .map(|h| {
                let (tx, rx) = std::sync::mpsc::channel();
                h.spawn(async move {
                    // A task spawned from a worker's task stays on that worker.
                    let inner = tokio::spawn(async { (current(), std::thread::current().id()) });
                    tx.send(inner.await.unwrap()).unwrap();
                });
                rx.recv().unwrap()
            })
            .collect();
        assert_eq!(seen[0].0, 0);
        assert_eq!(seen[1].0, 1);
        assert_ne!(seen[0].1, seen[1].1);
        assert_ne!(seen[0].1, std::thread::current().id());
        assert!(count() >= 2);
        workers.shutdown();
    }
}
