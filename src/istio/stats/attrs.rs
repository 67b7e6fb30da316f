//! The attributes dimension expressions read (`request.*`, `response.*`, `source.*`,
//! `destination.*`, `upstream.*`, `connection.*`, `xds.*`, `filter_state.*_peer.*`),
//! from what a stream or connection knew when it ended.
use std::net::SocketAddr;

use http::HeaderMap;

use super::{
    cel::{Attributes, Seg, Val, json_path, seg_name},
    labels::Local,
};
use crate::istio::peer::Peer;

#[derive(Default, Clone, Copy)]
pub struct Attrs<'a> {
    pub request_headers: Option<&'a HeaderMap>,
    pub method: Option<&'a str>,
    /// Path and query, as received.
    pub path: Option<&'a str>,
    pub host: Option<&'a str>,
    /// `HTTP/1.1`, `HTTP/2` …
    pub protocol: Option<&'a str>,
    pub scheme: Option<&'a str>,
    pub response_code: Option<u16>,
    pub response_headers: Option<&'a HeaderMap>,
    pub source: Option<SocketAddr>,
    pub destination: Option<SocketAddr>,
    pub upstream: Option<SocketAddr>,
    pub mtls: bool,
    pub peer_principal: Option<&'a str>,
    pub local_principal: Option<&'a str>,
    pub server_name: Option<&'a str>,
    pub cluster_name: Option<&'a str>,
    pub route_name: Option<&'a str>,
    pub downstream_peer: Option<&'a Peer>,
    pub upstream_peer: Option<&'a Peer>,
    pub local: Option<&'a Local>,
}

impl<'a> Attrs<'a> {
    /// What an access-log record knows (the connection's TLS identity included); the
    /// peers, principals of upstream connections and local labels are left out.
    pub fn of_record(r: &'a crate::telemetry::access_log::Record) -> Self {
        Attrs {
            request_headers: r.request_headers.as_ref(),
            method: r.method.as_deref(),
            path: r.path.as_deref(),
            host: r.authority.as_deref(),
            protocol: r.protocol,
            scheme: r.scheme,
            response_code: Some(r.response_code).filter(|c| *c != 0),
            response_headers: r.response_headers.as_ref(),
            source: r.downstream_remote,
            destination: r.downstream_local,
            upstream: r.upstream_host,
            mtls: r.tls.as_ref().is_some_and(|t| t.uri_san.is_some()),
            peer_principal: r.tls.as_ref().and_then(|t| t.uri_san.as_deref()),
            server_name: r.requested_server_name.as_deref(),
            cluster_name: r.upstream_cluster.as_deref(),
            route_name: r.route_name.as_deref(),
            ..Default::default()
        }
    }
}

fn text(v: Option<&str>) -> Option<Val> {
    v.map(|s| Val::Str(s.to_owned()))
}

fn header(h: Option<&HeaderMap>, rest: &[Seg]) -> Option<Val> {
    let [key] = rest else { return None };
    let v = h?.get(seg_name(key)?)?;
    Some(Val::Str(String::from_utf8_lossy(v.as_bytes()).into_owned()))
}

fn address(a: Option<SocketAddr>, field: &str) -> Option<Val> {
    let a = a?;
    match field {
        "address" => Some(Val::Str(a.to_string())),
        "port" => Some(Val::Int(i64::from(a.port()))),
        _ => None,
    }
}

fn peer(p: Option<&Peer>, field: &str) -> Option<Val> {
    let p = p?;
    let v = match field {
        "workload" => &p.workload,
        "namespace" => &p.namespace,
        "service" => &p.canonical_service,
        "revision" => &p.canonical_revision,
        "app" => &p.app,
        "version" => &p.version,
        "cluster" => &p.cluster,
        "identity" => &p.identity,
        _ => return None,
    };
    (!v.is_empty()).then(|| Val::Str(v.clone()))
}

impl Attributes for Attrs<'_> {
    fn get(&self, root: &str, path: &[Seg]) -> Option<Val> {
        let first = path.first().and_then(seg_name)?;
        let rest = &path[1..];
        let leaf = rest.is_empty();
        match root {
            "request" => match first {
                "headers" => header(self.request_headers, rest),
                "method" if leaf => text(self.method),
                "path" if leaf => text(self.path),
                "url_path" if leaf => text(self.path.map(|p| p.split('?').next().unwrap_or(p))),
                "query" if leaf => text(self.path.map(|p| p.split_once('?').map_or("", |q| q.1))),
                "host" if leaf => text(self.host),
                "scheme" if leaf => text(self.scheme),
                "protocol" if leaf => text(self.protocol),
                "useragent" if leaf => {
                    header(self.request_headers, &[Seg::Key("user-agent".into())])
                }
                "referer" if leaf => header(self.request_headers, &[Seg::Key("referer".into())]),
                "id" if leaf => header(self.request_headers, &[Seg::Key("x-request-id".into())]),
                _ => None,
            },
            "response" => match first {
                "code" if leaf => self.response_code.map(|c| Val::Int(i64::from(c))),
                "headers" => header(self.response_headers, rest),
                _ => None,
            },
            "source" if leaf => address(self.source, first),
            "destination" if leaf => address(self.destination, first),
            "upstream" if leaf => address(self.upstream, first),
            "connection" if leaf => match first {
                "mtls" => Some(Val::Bool(self.mtls)),
                "requested_server_name" => text(self.server_name),
                "uri_san_peer_certificate" => text(self.peer_principal),
                "uri_san_local_certificate" => text(self.local_principal),
                _ => None,
            },
            "xds" => match first {
                "cluster_name" if leaf => text(self.cluster_name),
                "route_name" if leaf => text(self.route_name),
                "node" => json_path(&self.local?.node, rest),
                _ => None,
            },
            "filter_state" => {
                let [field] = rest else { return None };
                let field = seg_name(field)?;
                match first {
                    "downstream_peer" => peer(self.downstream_peer, field),
                    "upstream_peer" => peer(self.upstream_peer, field),
                    _ => None,
                }
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::istio::stats::cel::Expr;

    #[test]
    fn expressions_read_the_stream() {
        let mut h = HeaderMap::new();
        h.insert("x-user", "alice".parse().unwrap());
        let local = Local {
            node: serde_json::json!({"id": "sidecar~1", "metadata": {"LABELS": {"version": "v2"}}}),
            ..Default::default()
        };
        let up = Peer {
            app: "ratings".into(),
            ..Default::default()
        };
        let a = Attrs {
            request_headers: Some(&h),
            path: Some("/a/b?x=1"),
            protocol: Some("HTTP/1.1"),
            destination: Some("10.0.0.1:9080".parse().unwrap()),
            route_name: Some("r1"),
            upstream_peer: Some(&up),
            local: Some(&local),
            ..Default::default()
        };
        let run = |src: &str| {
            Expr::parse(src)
                .unwrap()
                .eval(&a)
                .map(|v| v.to_string())
                .unwrap_or("unknown".into())
        };
        assert_eq!(run("request.headers['x-user']"), "alice");
        assert_eq!(run("request.url_path"), "/a/b");
        assert_eq!(run("string(destination.port)"), "9080");
        assert_eq!(run("xds.route_name"), "r1");
        assert_eq!(run("xds.node.metadata.LABELS.version"), "v2");
        assert_eq!(run("xds.node.metadata['LABELS']['version']"), "v2");
        assert_eq!(run("filter_state.upstream_peer.app"), "ratings");
        assert_eq!(run("filter_state.upstream_peer.version"), "unknown");
        assert_eq!(run("filter_state.downstream_peer.app"), "unknown");
        assert_eq!(run("connection.mtls"), "false");
        assert_eq!(run("request.headers['nope']"), "unknown");
    }
}
