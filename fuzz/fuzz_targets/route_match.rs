//! Route matching and rewriting: an arbitrary route table (protobuf, before the first
//! 0xff byte) against an arbitrary request (after it: method, authority, path and
//! header lines). A route or none, never a panic.
#![no_main]
use std::collections::HashSet;

use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use libfuzzer_sys::fuzz_target;
use pilotfish::config::route_config;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let (table, request) = match data.iter().position(|b| *b == 0xff) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &b""[..]),
    };
    let Ok(rc) = RouteConfiguration::decode(table) else {
        return;
    };
    let known: HashSet<String> = HashSet::new();
    let Ok(table) = route_config::route_table(&rc, "r", &known, false) else {
        return;
    };
    pilotfish_fuzz::route_request(&table, &String::from_utf8_lossy(request));
});
