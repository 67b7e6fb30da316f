//! Giving freed heap back to the kernel after config work.
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
    // This is the one FFI call of the crate outside socket options (made through nix).
    #[allow(unsafe_code)]
    unsafe {
        libc::malloc_trim(0);
    }
}

/// How long config changes must have been quiet before the trim: a burst of xDS
/// responses gets one trim, after its last response.
pub const QUIET: Duration = Duration::from_secs(1);

/// Trims once `changes` has been quiet for [`QUIET`] after each burst of changes; ends
/// when the sender is gone.
pub async fn release_after_bursts(mut changes: tokio::sync::watch::Receiver<u64>) {
    while changes.changed().await.is_ok() {
        loop {
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { return },
                () = tokio::time::sleep(QUIET) => break,
            }
        }
        release_free_memory();
    }
}
