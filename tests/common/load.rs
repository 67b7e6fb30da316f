//! Requests in a loop on several tasks, each on a fresh connection, until stopped:
//! what churn and fault tests run while they change things, counting what failed.
use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};

use http::Request;
use http_body_util::Full;

pub struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// `GET /` with `host: test` to `addr` from `tasks` tasks; a 200 is a success.
    pub fn start(addr: SocketAddr, tasks: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(Mutex::new(Vec::new()));
        let tasks = (0..tasks)
            .map(|_| {
                let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let req = Request::get("/")
                            .header("host", "test")
                            .body(Full::default())
                            .unwrap();
                        match super::send(addr, false, req).await {
                            Ok((s, _, _)) if s == 200 => {
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            other => failed
                                .lock()
                                .unwrap()
                                .push(format!("{:?}", other.map(|r| r.0))),
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            ok,
            failed,
            tasks,
        }
    }

    /// Stops the tasks: the successes, and each failure described.
    pub async fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.lock().unwrap().clone(),
        )
    }
}
