//! The listener inspectors' peeking: a TLS ClientHello parse (SNI, ALPN) and HTTP
//! detection on whatever bytes a connection opens with.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = pilotfish::listener::tls_hello::parse(data);
    let _ = pilotfish::listener::http_detect::detect(data);
});
