//! An xDS resource of each type (the first byte picks LDS, CDS, RDS, EDS or SDS; the
//! rest is the resource's protobuf encoding) goes through what a response goes
//! through: decode, the field-by-field check, compile (and for routes, the routing
//! table with a few requests). Each ends in a value or an error, never a panic.
#![no_main]
use std::collections::HashSet;

use envoy_types::pb::{
    envoy::{
        config::{
            cluster::v3::Cluster, endpoint::v3::ClusterLoadAssignment, listener::v3::Listener,
            route::v3::RouteConfiguration,
        },
        extensions::transport_sockets::tls::v3::Secret,
    },
    google::protobuf::Any,
};
use libfuzzer_sys::fuzz_target;
use pilotfish::{
    config::{Discovery, compile, route_config, tls},
    xds::resource::{Kind, decode},
};
use prost::Name;

fuzz_target!(|data: &[u8]| {
    let Some((&which, bytes)) = data.split_first() else {
        return;
    };
    let known: HashSet<String> = ["a", "b", "outbound|80||x"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let any = |url: String| Any {
        type_url: url,
        value: bytes.to_vec(),
    };
    match which % 5 {
        0 => {
            if let Ok(l) = decode::<Listener>(Kind::Listener, &any(Listener::type_url())) {
                let _ = compile::listener(&l, "l", &known);
            }
        }
        1 => {
            if let Ok(c) = decode::<Cluster>(Kind::Cluster, &any(Cluster::type_url())) {
                let _ = compile::cluster(&c, "c");
            }
        }
        2 => {
            let url = RouteConfiguration::type_url();
            if let Ok(rc) = decode::<RouteConfiguration>(Kind::Route, &any(url))
                && let Ok(table) = route_config::route_table(&rc, "r", &known, false)
            {
                pilotfish_fuzz::route_some(&table);
            }
        }
        3 => {
            let url = ClusterLoadAssignment::type_url();
            if let Ok(la) = decode::<ClusterLoadAssignment>(Kind::Endpoint, &any(url)) {
                let _ = compile::endpoints(&la, "e", Discovery::Eds);
            }
        }
        _ => {
            if let Ok(s) = decode::<Secret>(Kind::Secret, &any(Secret::type_url())) {
                let _ = tls::secret(&s, "s");
            }
        }
    }
});
