//! `istio.alpn` (`istio.envoy.config.filter.http.alpn.v2alpha1.FilterConfig`): on the
//! HTTP path, the ALPN list a TLS upstream connection offers is replaced by the one
//! configured for the request's upstream HTTP protocol. istiod puts it on outbound
//! connection managers so that an HTTP request over Istio mTLS offers
//! `istio-http/1.1` (or `istio-h2`, `istio-http/1.0`) and lands on the peer's HTTP
//! filter chain; a cluster's own list (`istio-peer-exchange`, `istio`) would select
//! its TCP chain. As in istio-proxy, a cluster whose `istio` metadata says
//! `alpn_override: "false"` (a DestinationRule's own SIMPLE/MUTUAL TLS) keeps its
//! list, and a plaintext upstream ignores the override.
//!
//! Connections made with an override never serve a request without it (Envoy makes
//! the ALPN part of the connection pool's key): each distinct list gets a pool of its
//! own per host, up to [`MAX_LISTS`] lists in a process.
use crate::sync::MutexExt;
use std::sync::{Arc, Mutex};

use serde_json::Value;

pub const TYPE: &str = "istio.envoy.config.filter.http.alpn.v2alpha1.FilterConfig";

/// Distinct override lists one process keeps pools for (istiod sends three).
pub const MAX_LISTS: usize = 8;

/// One override: the list, and its pool index (1-based; 0 is the cluster's own list).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Override {
    pub id: u8,
    pub protocols: Arc<[Vec<u8>]>,
}

/// The compiled filter: a list per upstream protocol (HTTP/1.0, HTTP/1.1, HTTP/2).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AlpnConfig {
    by_protocol: [Option<Override>; 3],
}

/// The upstream protocol a request goes out with, as the filter's enum names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http10,
    Http11,
    Http2,
}

impl AlpnConfig {
    /// The override for a request sent upstream with `protocol`.
    pub fn for_protocol(&self, protocol: Protocol) -> Option<&Override> {
        self.by_protocol[protocol as usize].as_ref()
    }
}

/// Compiles the filter's config (`any` is its proto3 JSON, from the descriptor pool).
/// A protocol listed twice keeps its last list, as istio-proxy's map does.
pub fn compile(json: &Value, path: &str) -> Result<AlpnConfig, String> {
    let mut out = AlpnConfig::default();
    let list = json["alpn_override"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for (i, o) in list.iter().enumerate() {
        let opath = format!("{path}.alpn_override[{i}]");
        let protocol = match o["upstream_protocol"].as_str().unwrap_or("HTTP10") {
            "HTTP10" => Protocol::Http10,
            "HTTP11" => Protocol::Http11,
            "HTTP2" => Protocol::Http2,
            other => return Err(format!("{opath}.upstream_protocol: unknown value {other}")),
        };
        let mut protocols = Vec::new();
        for (j, p) in o["alpn_override"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .enumerate()
        {
            let p = p.as_str().unwrap_or_default();
            if p.is_empty() || p.len() > 255 {
                return Err(format!(
                    "{opath}.alpn_override[{j}]: must be 1 to 255 bytes"
                ));
            }
            protocols.push(p.as_bytes().to_vec());
        }
        // An empty list overrides nothing (istio-proxy skips it).
        out.by_protocol[protocol as usize] = if protocols.is_empty() {
            None
        } else {
            Some(intern(protocols).map_err(|e| format!("{opath}: {e}"))?)
        };
    }
    Ok(out)
}

/// The same list always gets the same pool index.
fn intern(protocols: Vec<Vec<u8>>) -> Result<Override, String> {
    static LISTS: Mutex<Vec<Arc<[Vec<u8>]>>> = Mutex::new(Vec::new());
    let mut lists = LISTS.locked();
    let index = match lists.iter().position(|l| **l == *protocols) {
        Some(i) => i,
        None if lists.len() < MAX_LISTS => {
            lists.push(protocols.into());
            lists.len() - 1
        }
        None => {
            return Err(format!(
                "more than {MAX_LISTS} distinct ALPN override lists in one process are not supported"
            ));
        }
    };
    Ok(Override {
        id: index as u8 + 1,
        protocols: lists[index].clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn istiods_lists_compile_by_protocol_and_share_pools() {
        let istiod = serde_json::json!({"alpn_override": [
            {"alpn_override": ["istio-http/1.0", "istio", "http/1.0"]},
            {"upstream_protocol": "HTTP11", "alpn_override": ["istio-http/1.1", "istio", "http/1.1"]},
            {"upstream_protocol": "HTTP2", "alpn_override": ["istio-h2", "istio", "h2"]},
        ]});
        let a = compile(&istiod, "f").unwrap();
        let h2 = a.for_protocol(Protocol::Http2).unwrap();
        assert_eq!(
            h2.protocols.to_vec(),
            vec![b"istio-h2".to_vec(), b"istio".to_vec(), b"h2".to_vec()]
        );
        let h10 = a.for_protocol(Protocol::Http10).unwrap();
        assert_eq!(h10.protocols[0], b"istio-http/1.0");
        assert_ne!(h10.id, h2.id);
        // Another listener's copy uses the same pools.
        assert_eq!(compile(&istiod, "g").unwrap(), a);
        let none = compile(&serde_json::json!({}), "f").unwrap();
        assert!(none.for_protocol(Protocol::Http11).is_none());
    }

    #[test]
    fn bad_protocol_names_are_named() {
        let e = compile(
            &serde_json::json!({"alpn_override": [{"alpn_override": [""]}]}),
            "f",
        )
        .unwrap_err();
        assert_eq!(
            e,
            "f.alpn_override[0].alpn_override[0]: must be 1 to 255 bytes"
        );
    }
}
