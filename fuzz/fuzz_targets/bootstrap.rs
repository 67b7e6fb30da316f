//! Any bytes given as a bootstrap must give a config or an error, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        for json in [false, true] {
            if let Ok(msg) = pilotfish::bootstrap::parse_text(text, json) {
                let _ = pilotfish::bootstrap::from_message(&msg);
            }
        }
    }
});
