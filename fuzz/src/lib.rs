//! Shared pieces of the fuzz targets.
pub mod proxy;

use std::sync::Arc;

use http::HeaderMap;
use pilotfish::{
    config::RouteTable,
    http::{matchers::RequestHead, route_match::Routes},
    telemetry::stats::Store,
    upstream::manager::ClusterMap,
};

/// Routes `request` (lines: method, authority, path, then `name: value` headers)
/// through `table`, and applies what the chosen route would do to its path.
pub fn route_request(table: &RouteTable, request: &str) {
    let store = Arc::new(Store::default());
    let Ok(routes) = Routes::new(table, &store) else {
        return;
    };
    let mut lines = request.lines();
    let method = lines.next().unwrap_or("GET");
    let authority = lines.next().unwrap_or("example.com");
    let path = lines.next().unwrap_or("/");
    let mut headers = HeaderMap::new();
    for line in lines {
        if let Some((k, v)) = line.split_once(':')
            && let (Ok(k), Ok(v)) = (
                http::HeaderName::from_bytes(k.trim().as_bytes()),
                http::HeaderValue::from_str(v.trim()),
            )
        {
            headers.append(k, v);
        }
    }
    let head = RequestHead {
        method,
        scheme: "http",
        authority,
        path_and_query: path,
        headers: &headers,
    };
    let clusters = ClusterMap::default();
    let _ = routes.route(&head, &clusters);
}

/// A few ordinary requests through `table`.
pub fn route_some(table: &RouteTable) {
    for r in [
        "GET\nexample.com\n/",
        "POST\na.b:80\n/v1/x?y=1\ncontent-type: application/grpc",
        "GET\n[::1]:8080\n//a/../b%2F\nx-canary: yes",
    ] {
        route_request(table, r);
    }
}
