//! Access-log and formatted header values: any format string parses or is refused,
//! and a parsed one renders for an empty record.
#![no_main]
use libfuzzer_sys::fuzz_target;
use pilotfish::telemetry::access_log::{Record, parse};

fuzz_target!(|data: &[u8]| {
    if let Ok(format) = std::str::from_utf8(data)
        && let Ok(pieces) = parse(format)
    {
        let record = Record::default();
        let _ = record.render_text(&pieces);
        let _ = record.render_value(&pieces);
    }
});
