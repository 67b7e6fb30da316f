//! Path normalization (`normalize_path`, `merge_slashes`) on any path and query: a
//! normalized path or a refusal, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(path) = std::str::from_utf8(data) {
        for (normalize, merge) in [(true, false), (false, true), (true, true)] {
            let _ = pilotfish::http::path_normalize::normalize(path, normalize, merge);
        }
    }
});
