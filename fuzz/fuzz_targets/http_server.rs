//! The downstream HTTP/1 and HTTP/2 paths through the real server: the whole proxy runs
//! in this process (one worker, a listener whose routes cover direct responses, an
//! upstream, rewrites, header mutation, retries and a fault filter), with an
//! in-process upstream that echoes. Each input is written on a fresh connection as a
//! client would (HTTP/2 when it starts with the preface), and the answer read until
//! the proxy closes. A panic anywhere in the proxy aborts the process: a crash.
#![no_main]
use std::{
    io::{Read, Write},
    net::{Shutdown, TcpStream},
    time::Duration,
};

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let port = pilotfish_fuzz::proxy::listener_port();
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = s.write_all(data);
    let _ = s.shutdown(Shutdown::Write);
    let mut sink = [0u8; 16 * 1024];
    while matches!(s.read(&mut sink), Ok(n) if n > 0) {}
});
