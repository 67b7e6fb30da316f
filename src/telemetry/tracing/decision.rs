//! Whether a request is traced, as Envoy's connection manager decides it: the reason
//! travels in the UUID `x-request-id` (one hex digit, the UUID's version digit), so a
//! decision made at the edge holds at every later hop that keeps the request id.
//!
//! A request already carrying a reason keeps it; otherwise `x-client-trace-id`
//! (within `client_sampling`), then `x-envoy-force-trace`, then `random_sampling`
//! (derived from the request id, so every hop draws the same) give one; finally a
//! request outside `overall_sampling` is not traced.
use http::{HeaderMap, HeaderName, HeaderValue};

use crate::{
    config::tracing::TracingConfig,
    http::headers::X_REQUEST_ID,
    telemetry::stats::{Counter, Store},
};

pub const X_CLIENT_TRACE_ID: HeaderName = HeaderName::from_static("x-client-trace-id");
pub const X_ENVOY_FORCE_TRACE: HeaderName = HeaderName::from_static("x-envoy-force-trace");

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    NotTraceable,
    Sampling,
    ServiceForced,
    ClientForced,
}

impl Reason {
    pub fn traced(self) -> bool {
        self != Reason::NotTraceable
    }
}

/// Where the reason sits in a UUID (`xxxxxxxx-xxxx-Vxxx-…`).
const POSITION: usize = 14;

fn digit(r: Reason) -> u8 {
    match r {
        Reason::Sampling => b'9',
        Reason::ServiceForced => b'a',
        Reason::ClientForced => b'b',
        Reason::NotTraceable => b'4',
    }
}

fn is_uuid(id: &[u8]) -> bool {
    id.len() == 36
}

/// The reason a request id carries.
pub fn reason_of(id: &[u8]) -> Reason {
    if !is_uuid(id) {
        return Reason::NotTraceable;
    }
    match id[POSITION] {
        b'9' => Reason::Sampling,
        b'a' => Reason::ServiceForced,
        b'b' => Reason::ClientForced,
        _ => Reason::NotTraceable,
    }
}

/// The request id with `reason` packed in (unchanged when it is not a UUID).
pub fn with_reason(id: &HeaderValue, reason: Reason) -> HeaderValue {
    let bytes = id.as_bytes();
    if !is_uuid(bytes) {
        return id.clone();
    }
    let mut out = bytes.to_vec();
    out[POSITION] = digit(reason);
    HeaderValue::from_bytes(&out).unwrap_or_else(|_| id.clone())
}

/// The request id as a number for sampling: its first eight hex digits.
fn id_number(id: &[u8]) -> Option<u64> {
    let head = id.get(..8)?;
    u64::from_str_radix(std::str::from_utf8(head).ok()?, 16).ok()
}

/// `http.<stat_prefix>.tracing.*`: requests by the reason they are traced or not.
#[derive(Debug, Clone)]
pub struct DecisionStats {
    random_sampling: Counter,
    service_forced: Counter,
    client_enabled: Counter,
    not_traceable: Counter,
    _health_check: Counter,
}

impl DecisionStats {
    pub fn new(store: &Store, stat_prefix: &str) -> Self {
        let c = |name: &str| {
            store.counter(
                format!("http.{stat_prefix}.tracing.{name}"),
                &format!("envoy_http_tracing_{name}"),
                &[("envoy_http_conn_manager_prefix", stat_prefix)],
            )
        };
        DecisionStats {
            random_sampling: c("random_sampling"),
            service_forced: c("service_forced"),
            client_enabled: c("client_enabled"),
            not_traceable: c("not_traceable"),
            _health_check: c("health_check"),
        }
    }

    fn count(&self, r: Reason) {
        match r {
            Reason::NotTraceable => &self.not_traceable,
            Reason::Sampling => &self.random_sampling,
            Reason::ServiceForced => &self.service_forced,
            Reason::ClientForced => &self.client_enabled,
        }
        .inc();
    }
}

/// Decides for a request whose headers are final (request id generated or kept),
/// packs the reason into its request id and counts it. `edge`: the request came from
/// outside (a kept external request id says nothing about tracing).
pub fn decide(h: &mut HeaderMap, cfg: &TracingConfig, edge: bool, stats: &DecisionStats) -> Reason {
    let reason = reason_for(h, cfg, edge);
    stats.count(reason);
    reason
}

fn reason_for(h: &mut HeaderMap, cfg: &TracingConfig, edge: bool) -> Reason {
    // Without the request id to sample by, Envoy leaves the decision to the tracer.
    if !cfg.sample_by_request_id {
        return Reason::Sampling;
    }
    let Some(id) = h.get(X_REQUEST_ID).cloned() else {
        return Reason::NotTraceable;
    };
    let Some(number) = id_number(id.as_bytes()) else {
        return Reason::NotTraceable;
    };
    let result = number % 10_000;
    let within = |n: u64, share: u32| n % 10_000 < u64::from(share);
    let mut reason = if cfg.pack_trace_reason && !edge {
        reason_of(id.as_bytes())
    } else {
        Reason::NotTraceable
    };
    if reason == Reason::NotTraceable {
        if h.contains_key(X_CLIENT_TRACE_ID) && within(fastrand::u64(..), cfg.client_sampling) {
            reason = Reason::ClientForced;
        } else if h.contains_key(X_ENVOY_FORCE_TRACE) {
            reason = Reason::ServiceForced;
        } else if within(result, cfg.random_sampling) {
            reason = Reason::Sampling;
        }
    }
    if reason.traced() && !within(result, cfg.overall_sampling) {
        reason = Reason::NotTraceable;
    }
    if cfg.pack_trace_reason && reason_of(id.as_bytes()) != reason {
        h.insert(X_REQUEST_ID, with_reason(&id, reason));
    }
    reason
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tracing::ProviderRef;

    fn cfg(random: u32, overall: u32) -> TracingConfig {
        TracingConfig {
            provider: ProviderRef::Bootstrap,
            client_sampling: 10_000,
            random_sampling: random,
            overall_sampling: overall,
            max_path_tag_length: 256,
            custom_tags: Vec::new(),
            spawn_upstream_span: false,
            pack_trace_reason: true,
            sample_by_request_id: true,
        }
    }

    fn with_id(id: &str, extra: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(X_REQUEST_ID, HeaderValue::from_str(id).unwrap());
        for (k, v) in extra {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    fn stats() -> DecisionStats {
        DecisionStats::new(&Store::new(), "t")
    }

    #[test]
    fn random_sampling_draws_from_the_request_id() {
        // 0x000003e7 = 999: 999 % 10000 < 1000 (10 %), not < 900 (9 %).
        let id = "000003e7-0000-4000-8000-000000000000";
        let mut h = with_id(id, &[]);
        assert_eq!(
            decide(&mut h, &cfg(1000, 10_000), false, &stats()),
            Reason::Sampling
        );
        assert_eq!(h[X_REQUEST_ID], "000003e7-0000-9000-8000-000000000000");
        let mut h = with_id(id, &[]);
        assert_eq!(
            decide(&mut h, &cfg(900, 10_000), false, &stats()),
            Reason::NotTraceable
        );
        assert_eq!(h[X_REQUEST_ID], id);
        // The overall share caps with the same draw.
        let mut h = with_id(id, &[]);
        assert_eq!(
            decide(&mut h, &cfg(10_000, 900), false, &stats()),
            Reason::NotTraceable
        );
        assert_eq!(h[X_REQUEST_ID], id);
    }

    #[test]
    fn a_packed_reason_holds_at_the_next_hop_unless_from_outside() {
        let id = "ffffffff-0000-9000-8000-000000000000";
        let mut h = with_id(id, &[]);
        assert_eq!(
            decide(&mut h, &cfg(0, 10_000), false, &stats()),
            Reason::Sampling
        );
        let mut h = with_id(id, &[]);
        assert_eq!(
            decide(&mut h, &cfg(0, 10_000), true, &stats()),
            Reason::NotTraceable
        );
        assert_eq!(h[X_REQUEST_ID], "ffffffff-0000-4000-8000-000000000000");
    }

    #[test]
    fn client_and_forced_tracing() {
        let id = "ffffffff-0000-4000-8000-000000000000";
        let mut h = with_id(id, &[("x-client-trace-id", "abc")]);
        assert_eq!(
            decide(&mut h, &cfg(0, 10_000), false, &stats()),
            Reason::ClientForced
        );
        assert_eq!(h[X_REQUEST_ID], "ffffffff-0000-b000-8000-000000000000");
        let mut h = with_id(id, &[("x-envoy-force-trace", "1")]);
        assert_eq!(
            decide(&mut h, &cfg(0, 10_000), false, &stats()),
            Reason::ServiceForced
        );
        assert_eq!(h[X_REQUEST_ID], "ffffffff-0000-a000-8000-000000000000");
        // No request id, nothing to decide by.
        let mut h = HeaderMap::new();
        let s = stats();
        assert_eq!(
            decide(&mut h, &cfg(10_000, 10_000), false, &s),
            Reason::NotTraceable
        );
        assert_eq!(s.not_traceable.get(), 1);
    }
}
