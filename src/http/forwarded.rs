//! `x-forwarded-for`, `x-forwarded-proto` and the external-request rules of the
//! connection manager, as Envoy 1.40 applies them:
//!
//! - `use_remote_address: false` (the default): `x-forwarded-for` is left alone,
//!   `x-forwarded-proto` kept if the client sent one.
//! - `use_remote_address: true`: the peer address is appended to `x-forwarded-for`
//!   (unless `skip_xff_append`; a loopback peer is replaced by this host's first
//!   non-loopback address, as Envoy does); the trusted client address is the peer, or
//!   with `xff_num_trusted_hops: N` the N-th address from the right of the received
//!   `x-forwarded-for`. No address is internal by default in Envoy 1.40, so every
//!   request is external: it gets `x-envoy-external-address`, a fresh `x-request-id`
//!   (unless `preserve_external_request_id`) and `x-forwarded-proto` of the connection
//!   (unless hops are trusted).
//! - Either way, no request is internal, so Envoy's control headers sent by a client
//!   (`x-envoy-internal`, `x-envoy-upstream-rq-timeout-ms`, …) are dropped.
use std::net::{IpAddr, SocketAddr};

use http::{HeaderMap, HeaderName, HeaderValue};

use super::headers::{X_ENVOY_EXTERNAL_ADDRESS, X_FORWARDED_FOR, X_FORWARDED_PROTO, X_REQUEST_ID};

/// The connection manager's settings for forwarded headers.
#[derive(Debug, Clone, Default)]
pub struct ForwardedConfig {
    pub use_remote_address: bool,
    pub skip_xff_append: bool,
    pub xff_num_trusted_hops: u32,
    pub preserve_external_request_id: bool,
    /// `internal_address_config.cidr_ranges`: a request from one of these is internal.
    pub internal: Vec<crate::net::cidr::Cidr>,
}

/// Request headers only Envoy itself may set; a request that is not internal loses them.
const INTERNAL_HEADERS: [&str; 17] = [
    "x-envoy-decorator-operation",
    "x-envoy-downstream-service-cluster",
    "x-envoy-downstream-service-node",
    "x-envoy-expected-rq-timeout-ms",
    "x-envoy-external-address",
    "x-envoy-force-trace",
    "x-envoy-hedge-on-per-try-timeout",
    "x-envoy-internal",
    "x-envoy-ip-tags",
    "x-envoy-max-retries",
    "x-envoy-retriable-header-names",
    "x-envoy-retriable-status-codes",
    "x-envoy-retry-grpc-on",
    "x-envoy-retry-on",
    "x-envoy-upstream-alt-stat-name",
    "x-envoy-upstream-rq-per-try-timeout-ms",
    "x-envoy-upstream-rq-timeout-ms",
];

impl ForwardedConfig {
    /// The client's address as Envoy's connection manager determines it (RBAC's
    /// `remote_ip`): with `use_remote_address`, the peer or, with trusted hops, the
    /// N-th address from the right of `x-forwarded-for`; without it, the last address
    /// of `x-forwarded-for` after the trusted hops, else the peer. Read before [`apply`].
    pub fn remote_address(&self, h: &HeaderMap, peer: SocketAddr) -> SocketAddr {
        let hops = self.xff_num_trusted_hops as usize;
        if self.use_remote_address && hops == 0 {
            return peer;
        }
        let nth = if self.use_remote_address {
            hops - 1
        } else {
            hops
        };
        xff(h)
            .as_deref()
            .and_then(|x| x.rsplit(',').nth(nth))
            .and_then(|a| a.trim().parse::<IpAddr>().ok())
            .map_or(peer, |ip| SocketAddr::new(ip, 0))
    }

    /// Whether a request is internal, as Envoy decides it: its client address (the
    /// peer with `use_remote_address`, else the last `x-forwarded-for` address after
    /// the trusted hops) is in `internal_address_config`, and it is trustworthy: with
    /// `use_remote_address` the request came without `x-forwarded-for`, without it the
    /// header holds that one address. Read before [`apply`](Self::apply).
    pub fn is_internal(&self, h: &HeaderMap, peer: SocketAddr) -> bool {
        if self.internal.is_empty() {
            return false;
        }
        let trustworthy = if self.use_remote_address {
            !h.contains_key(X_FORWARDED_FOR)
        } else {
            self.xff_num_trusted_hops == 0
                && xff(h).is_some_and(|x| !x.contains(',') && x.trim().parse::<IpAddr>().is_ok())
        };
        let ip = self.remote_address(h, peer).ip();
        trustworthy && self.internal.iter().any(|c| c.contains(ip))
    }

    /// Applies the rules to a request from `peer`; `internal` is what
    /// [`is_internal`](Self::is_internal) said of it. Runs before the connection
    /// manager adds its own headers (`x-request-id`, the expected timeout).
    /// `tls`: the connection is TLS (`x-forwarded-proto: https`).
    pub fn apply(&self, h: &mut HeaderMap, peer: SocketAddr, internal: bool, tls: bool) {
        let scheme = HeaderValue::from_static(if tls { "https" } else { "http" });
        if internal {
            // Envoy's control headers from an internal client are trusted.
            h.insert("x-envoy-internal", HeaderValue::from_static("true"));
        } else if h.keys().any(|k| k.as_str().starts_with("x-envoy-")) {
            // One pass over the names is cheaper than a lookup per internal header.
            for name in INTERNAL_HEADERS {
                h.remove(HeaderName::from_static(name));
            }
        }
        if !self.use_remote_address {
            if !h.contains_key(X_FORWARDED_PROTO) {
                h.insert(X_FORWARDED_PROTO, scheme);
            }
            return;
        }
        let received = xff(h);
        let trusted = match self.xff_num_trusted_hops {
            0 => Some(peer.ip().to_string()),
            n => received
                .as_deref()
                .and_then(|x| x.rsplit(',').nth(n as usize - 1))
                .map(|a| a.trim().to_owned())
                .or_else(|| Some(peer.ip().to_string())),
        };
        if !self.skip_xff_append {
            let appended = appended_address(peer.ip()).to_string();
            let value = match received {
                Some(x) => format!("{x},{appended}"),
                None => appended,
            };
            if let Ok(v) = HeaderValue::from_str(&value) {
                h.insert(X_FORWARDED_FOR, v);
            }
        }
        if self.xff_num_trusted_hops == 0 || !h.contains_key(X_FORWARDED_PROTO) {
            h.insert(X_FORWARDED_PROTO, scheme);
        }
        // What only an external (edge) request gets.
        if internal {
            return;
        }
        if let Some(Ok(v)) = trusted.map(|t| HeaderValue::from_str(&t)) {
            h.insert(X_ENVOY_EXTERNAL_ADDRESS, v);
        }
        if !self.preserve_external_request_id {
            h.remove(X_REQUEST_ID);
        }
    }
}

/// The received `x-forwarded-for`, all values joined.
fn xff(h: &HeaderMap) -> Option<String> {
    let values: Vec<&str> = h
        .get_all(X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    (!values.is_empty()).then(|| values.join(","))
}

/// The address appended for a peer: itself, or for a loopback peer this host's first
/// non-loopback address of the same family (what Envoy appends), if it has one.
fn appended_address(peer: IpAddr) -> IpAddr {
    if !peer.is_loopback() {
        return peer;
    }
    local_address(peer.is_ipv4()).unwrap_or(peer)
}

/// What Envoy's internal client adds to a request it makes itself (a mirror's copy):
/// `x-envoy-internal: true`, and this host's address appended to `x-forwarded-for`
/// (its first non-loopback IPv4 address, as Envoy's local node address, read once).
pub fn mark_internal(h: &mut HeaderMap) {
    h.insert("x-envoy-internal", HeaderValue::from_static("true"));
    if let Some(ip) = local_ip() {
        let value = match xff(h) {
            Some(x) => format!("{x},{ip}"),
            None => ip.to_string(),
        };
        if let Ok(v) = HeaderValue::from_str(&value) {
            h.insert(X_FORWARDED_FOR, v);
        }
    }
}

/// This machine's first non-loopback IPv4 address (Envoy's local address, which it
/// appends to `x-forwarded-for` and names itself by in Zipkin spans).
pub fn local_ip() -> Option<IpAddr> {
    static LOCAL: std::sync::OnceLock<Option<IpAddr>> = std::sync::OnceLock::new();
    *LOCAL.get_or_init(|| local_address(true))
}

fn local_address(v4: bool) -> Option<IpAddr> {
    let addrs = nix::ifaddrs::getifaddrs().ok()?;
    addrs
        .filter_map(|a| a.address)
        .filter_map(|s| {
            if v4 {
                s.as_sockaddr_in().map(|a| IpAddr::V4(a.ip()))
            } else {
                s.as_sockaddr_in6().map(|a| IpAddr::V6(a.ip()))
            }
        })
        .find(|ip| !ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apply(cfg: &ForwardedConfig, pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h: HeaderMap = pairs
            .iter()
            .map(|(k, v)| {
                (
                    http::HeaderName::from_static(k),
                    HeaderValue::from_static(v),
                )
            })
            .collect();
        let peer = "10.0.0.9:5555".parse().unwrap();
        let internal = cfg.is_internal(&h, peer);
        cfg.apply(&mut h, peer, internal, false);
        h
    }

    #[test]
    fn remote_address_rules() {
        let off = ForwardedConfig::default();
        let h = apply(
            &off,
            &[
                ("x-forwarded-for", "1.2.3.4"),
                ("x-forwarded-proto", "https"),
            ],
        );
        assert_eq!(h["x-forwarded-for"], "1.2.3.4");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert!(!h.contains_key("x-envoy-external-address"));

        let on = ForwardedConfig {
            use_remote_address: true,
            ..Default::default()
        };
        let h = apply(
            &on,
            &[
                ("x-forwarded-for", "1.2.3.4, 5.6.7.8"),
                ("x-forwarded-proto", "https"),
                ("x-request-id", "abc"),
                ("x-envoy-retry-on", "5xx"),
            ],
        );
        assert_eq!(h["x-forwarded-for"], "1.2.3.4, 5.6.7.8,10.0.0.9");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-envoy-external-address"], "10.0.0.9");
        assert!(!h.contains_key("x-request-id"));
        assert!(!h.contains_key("x-envoy-retry-on"));

        let hops = ForwardedConfig {
            use_remote_address: true,
            xff_num_trusted_hops: 1,
            ..Default::default()
        };
        let h = apply(
            &hops,
            &[
                ("x-forwarded-for", "1.2.3.4, 5.6.7.8"),
                ("x-forwarded-proto", "https"),
            ],
        );
        assert_eq!(h["x-envoy-external-address"], "5.6.7.8");
        assert_eq!(h["x-forwarded-proto"], "https");

        let skip = ForwardedConfig {
            use_remote_address: true,
            skip_xff_append: true,
            ..Default::default()
        };
        let h = apply(&skip, &[]);
        assert!(!h.contains_key("x-forwarded-for"));
        assert_eq!(h["x-envoy-external-address"], "10.0.0.9");
    }

    #[test]
    fn internal_requests_keep_envoy_headers() {
        let cfg = ForwardedConfig {
            use_remote_address: true,
            internal: vec![crate::net::cidr::Cidr::new("10.0.0.0".parse().unwrap(), 8).unwrap()],
            ..Default::default()
        };
        let h = apply(
            &cfg,
            &[("x-envoy-retry-on", "5xx"), ("x-request-id", "abc")],
        );
        assert_eq!(h["x-envoy-retry-on"], "5xx");
        assert_eq!(h["x-envoy-internal"], "true");
        assert_eq!(h["x-request-id"], "abc");
        assert!(!h.contains_key("x-envoy-external-address"));
        // A request that already went through a proxy is not trusted.
        let h = apply(
            &cfg,
            &[("x-envoy-retry-on", "5xx"), ("x-forwarded-for", "10.1.1.1")],
        );
        assert!(!h.contains_key("x-envoy-retry-on"));
        // Without use_remote_address: the one address in x-forwarded-for decides.
        let cfg = ForwardedConfig {
            internal: vec![crate::net::cidr::Cidr::new("10.0.0.0".parse().unwrap(), 8).unwrap()],
            ..Default::default()
        };
        let h = apply(
            &cfg,
            &[("x-envoy-retry-on", "5xx"), ("x-forwarded-for", "10.1.1.1")],
        );
        assert_eq!(h["x-envoy-retry-on"], "5xx");
        let h = apply(&cfg, &[("x-envoy-retry-on", "5xx")]);
        assert!(!h.contains_key("x-envoy-retry-on"));
    }
}
