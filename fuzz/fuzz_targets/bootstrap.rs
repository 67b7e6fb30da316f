//! Any bytes given as a bootstrap (YAML or JSON, unknown fields refused or dropped)
//! must give a config or an error, never a panic: decode, check, compile.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        for (json, allow_unknown) in [(false, false), (true, false), (false, true)] {
            let mut unknown = Vec::new();
            if let Ok(msg) =
                pilotfish::bootstrap::parse_text(text, json, allow_unknown, &mut unknown)
            {
                // Checks the message field by field and compiles it.
                let _ = pilotfish::bootstrap::from_message(&msg);
            }
        }
    }
});
