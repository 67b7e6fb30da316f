//! Giving freed heap back to the kernel after config work, and reporting what the
//! allocator holds (the admin `/memory`).
//!
//! glibc keeps what a thread frees in that thread's arena and returns pages only from
//! the top of an arena. Loading a config is a burst (decode, checks, the compiled
//! result, the dump) that is mostly freed again; without a trim the process would stay
//! resident at that peak for its whole life.

use std::time::Duration;

/// Returns the allocator's free pages to the kernel. For after a burst of config work,
/// never per request: it walks and locks every arena in turn.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `malloc_trim` takes a plain integer, touches only allocator-internal state
    // under the allocator's own locks, and is safe to call from any thread at any time.
    // This module holds the crate's only FFI calls outside socket options (made through
    // nix): this one and `mallinfo2` below.
    #[allow(unsafe_code)]
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The allocator's figures, in bytes, under the names of Envoy's `/memory`.
#[derive(Debug, Default, Clone, Copy)]
pub struct Usage {
    /// In use by the program.
    pub allocated: u64,
    /// Held from the kernel: the arenas and the large blocks mapped on their own.
    pub heap_size: u64,
    /// Free inside the arenas (reused before more is asked for; trimmed pages included).
    pub pageheap_free: u64,
    /// Resident (`VmRSS`).
    pub total_physical_bytes: u64,
}

/// What the allocator holds now. `mallinfo2` walks every arena under its lock: for the
/// admin endpoint, never per request.
pub fn usage() -> Usage {
    let mut u = Usage {
        total_physical_bytes: resident_bytes().unwrap_or(0),
        ..Usage::default()
    };
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: `mallinfo2` takes no arguments and returns a plain struct by value;
        // it reads allocator state under the allocator's own locks (glibc 2.33+).
        #[allow(unsafe_code)]
        let m = unsafe { libc::mallinfo2() };
        u.allocated = (m.uordblks + m.hblkhd) as u64;
        u.heap_size = (m.arena + m.hblkhd) as u64;
        u.pageheap_free = m.fordblks as u64;
    }
    u
}

impl Usage {
    /// The JSON Envoy's `/memory` answers with (proto3 JSON: 64-bit numbers as
    /// strings). glibc has no unmapped page heap or thread caches to report apart.
    pub fn to_json(&self) -> String {
        format!(
            "{{\n \"allocated\": \"{}\",\n \"heap_size\": \"{}\",\n \"pageheap_unmapped\": \"0\",\n \"pageheap_free\": \"{}\",\n \"total_thread_cache\": \"0\",\n \"total_physical_bytes\": \"{}\"\n}}\n",
            self.allocated, self.heap_size, self.pageheap_free, self.total_physical_bytes
        )
    }
}

fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// How long config changes must have been quiet before the trim: a burst of xDS
/// responses gets one trim, after its last response.
pub const QUIET: Duration = Duration::from_secs(1);

/// Once `changes` has been quiet for [`QUIET`] after each burst of changes, runs
/// `release` (which lets go of what the burst left unused) and trims; ends when the
/// sender is gone.
pub async fn release_after_bursts(changes: tokio::sync::watch::Receiver<u64>, release: impl Fn()) {
    after_each_burst(changes, || {
        release();
        release_free_memory();
    })
    .await;
}

/// Trims once [`QUIET`] has passed: for a one-off burst (a large `/config_dump`) whose
/// memory is still in use now.
pub fn release_later() {
    tokio::spawn(async {
        tokio::time::sleep(QUIET).await;
        release_free_memory();
    });
}

/// Runs `f` once `changes` has been quiet for [`QUIET`] after each burst of changes.
async fn after_each_burst(mut changes: tokio::sync::watch::Receiver<u64>, f: impl Fn()) {
    while changes.changed().await.is_ok() {
        loop {
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { return },
                () = tokio::time::sleep(QUIET) => break,
            }
        }
        f();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    };

    use super::*;

    /// Ten changes 100 ms apart are one burst: one run, a second after the last.
    #[tokio::test(start_paused = true)]
    async fn one_run_per_burst_after_it_quiets() {
        let (tx, rx) = tokio::sync::watch::channel(0u64);
        let runs = Arc::new(AtomicUsize::new(0));
        let counted = runs.clone();
        let task = tokio::spawn(after_each_burst(rx, move || {
            counted.fetch_add(1, Ordering::SeqCst);
        }));
        for burst in 1..=2 {
            for _ in 0..10 {
                tx.send_modify(|v| *v += 1);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            assert_eq!(runs.load(Ordering::SeqCst), burst - 1, "not while it lasts");
            tokio::time::sleep(QUIET).await;
            assert_eq!(runs.load(Ordering::SeqCst), burst);
        }
        drop(tx);
        task.await.unwrap();
    }

    #[test]
    fn usage_counts_a_live_allocation() {
        // Other tests allocate and free meanwhile: the block alone is the sure part.
        let block = vec![1u8; 8 << 20];
        let during = super::usage();
        assert!(during.allocated >= 8 << 20, "{during:?}");
        assert!(during.heap_size >= during.allocated);
        assert!(during.total_physical_bytes > 0);
        drop(block);
        let v: serde_json::Value = serde_json::from_str(&during.to_json()).unwrap();
        assert_eq!(v["allocated"], during.allocated.to_string());
        assert_eq!(v["pageheap_unmapped"], "0");
    }
}
