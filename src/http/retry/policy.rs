//! A route's `retry_policy`, compiled: which failures are retried, how often, how long
//! each try may take and how long to wait between tries.
use std::time::Duration;

use http::HeaderName;

use crate::http::matchers::HeaderMatcher;

/// The `retry_on` / `x-envoy-retry-on` / `x-envoy-retry-grpc-on` conditions, as bits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetryOn(u32);

impl RetryOn {
    pub const FIVE_XX: RetryOn = RetryOn(1);
    pub const GATEWAY_ERROR: RetryOn = RetryOn(1 << 1);
    pub const RESET: RetryOn = RetryOn(1 << 2);
    pub const RESET_BEFORE_REQUEST: RetryOn = RetryOn(1 << 3);
    pub const CONNECT_FAILURE: RetryOn = RetryOn(1 << 4);
    pub const ENVOY_RATELIMITED: RetryOn = RetryOn(1 << 5);
    pub const RETRIABLE_4XX: RetryOn = RetryOn(1 << 6);
    pub const REFUSED_STREAM: RetryOn = RetryOn(1 << 7);
    pub const RETRIABLE_STATUS_CODES: RetryOn = RetryOn(1 << 8);
    pub const RETRIABLE_HEADERS: RetryOn = RetryOn(1 << 9);
    pub const HTTP3_POST_CONNECT_FAILURE: RetryOn = RetryOn(1 << 10);
    pub const GRPC_CANCELLED: RetryOn = RetryOn(1 << 11);
    pub const GRPC_DEADLINE_EXCEEDED: RetryOn = RetryOn(1 << 12);
    pub const GRPC_INTERNAL: RetryOn = RetryOn(1 << 13);
    pub const GRPC_RESOURCE_EXHAUSTED: RetryOn = RetryOn(1 << 14);
    pub const GRPC_UNAVAILABLE: RetryOn = RetryOn(1 << 15);

    const HTTP_NAMES: [(&'static str, RetryOn); 11] = [
        ("5xx", Self::FIVE_XX),
        ("gateway-error", Self::GATEWAY_ERROR),
        ("reset", Self::RESET),
        ("reset-before-request", Self::RESET_BEFORE_REQUEST),
        ("connect-failure", Self::CONNECT_FAILURE),
        ("envoy-ratelimited", Self::ENVOY_RATELIMITED),
        ("retriable-4xx", Self::RETRIABLE_4XX),
        ("refused-stream", Self::REFUSED_STREAM),
        ("retriable-status-codes", Self::RETRIABLE_STATUS_CODES),
        ("retriable-headers", Self::RETRIABLE_HEADERS),
        (
            "http3-post-connect-failure",
            Self::HTTP3_POST_CONNECT_FAILURE,
        ),
    ];
    const GRPC_NAMES: [(&'static str, RetryOn); 5] = [
        ("cancelled", Self::GRPC_CANCELLED),
        ("deadline-exceeded", Self::GRPC_DEADLINE_EXCEEDED),
        ("internal", Self::GRPC_INTERNAL),
        ("resource-exhausted", Self::GRPC_RESOURCE_EXHAUSTED),
        ("unavailable", Self::GRPC_UNAVAILABLE),
    ];

    pub fn contains(self, other: RetryOn) -> bool {
        self.0 & other.0 == other.0
    }

    pub fn any(self, other: RetryOn) -> bool {
        self.0 & other.0 != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// A route's `retry_on`: HTTP and gRPC conditions, comma-separated. An unknown name
    /// is an error (Envoy rejects the route).
    pub fn parse_config(s: &str) -> Result<RetryOn, String> {
        let mut out = RetryOn::default();
        for name in s.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            out = out
                | Self::lookup(name, &Self::HTTP_NAMES)
                    .or_else(|| Self::lookup(name, &Self::GRPC_NAMES))
                    .ok_or_else(|| format!("unknown retry condition '{name}'"))?;
        }
        Ok(out)
    }

    /// `x-envoy-retry-on` (HTTP names) or `x-envoy-retry-grpc-on` (gRPC names):
    /// unknown names are ignored, as Envoy ignores them in headers.
    pub fn parse_header(s: &str, grpc: bool) -> RetryOn {
        let table: &[(&str, RetryOn)] = if grpc {
            &Self::GRPC_NAMES
        } else {
            &Self::HTTP_NAMES
        };
        s.split(',')
            .filter_map(|n| Self::lookup(n.trim(), table))
            .fold(RetryOn::default(), |a, b| a | b)
    }

    fn lookup(name: &str, table: &[(&str, RetryOn)]) -> Option<RetryOn> {
        table.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
    }
}

impl std::ops::BitOr for RetryOn {
    type Output = RetryOn;
    fn bitor(self, o: RetryOn) -> RetryOn {
        RetryOn(self.0 | o.0)
    }
}

/// `rate_limited_retry_back_off`: the wait a rate-limited upstream asks for.
#[derive(Debug, Clone)]
pub struct RateLimitedBackOff {
    /// Headers read in order; the first that parses gives the wait.
    pub reset_headers: Vec<(HeaderName, ResetFormat)>,
    pub max_interval: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetFormat {
    /// Seconds to wait (`Retry-After: 3`).
    Seconds,
    /// A Unix timestamp in seconds (`X-RateLimit-Reset: 1700000000`).
    UnixTimestamp,
}

/// A compiled `RetryPolicy`.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub retry_on: RetryOn,
    /// Retries after the first attempt (Envoy's default 1).
    pub num_retries: u32,
    pub per_try_timeout: Option<Duration>,
    pub per_try_idle_timeout: Option<Duration>,
    /// `retry_back_off`: base (default 25 ms) and cap (default 10 × base).
    pub back_off: (Duration, Duration),
    pub rate_limited_back_off: Option<RateLimitedBackOff>,
    pub retriable_status_codes: Vec<u16>,
    pub retriable_headers: Vec<HeaderMatcher>,
    /// The request must match one of these to be retried at all (none: any request).
    pub retriable_request_headers: Vec<HeaderMatcher>,
    /// `previous_hosts`: a retry avoids the hosts already tried.
    pub previous_hosts: bool,
    /// `omit_canary_hosts`: a retry avoids canary hosts.
    pub omit_canary_hosts: bool,
    /// `omit_host_metadata`: a retry avoids hosts whose `envoy.lb` metadata has every
    /// one of these values (a list value matches when any element does). Empty: none.
    pub omit_host_metadata: Vec<(String, serde_json::Value)>,
    /// `previous_priorities` with its `update_frequency`: every that many attempts, the
    /// priorities tried so far are left out of the priority load for the next pick.
    pub previous_priorities: Option<u32>,
    /// `host_selection_retry_max_attempts`: picks made to find a host the predicates
    /// accept before taking whatever the last pick was (Envoy's default 1).
    pub host_selection_max_attempts: u32,
    /// The route's `hedge_policy.hedge_on_per_try_timeout`: an attempt past its
    /// per-try timeout keeps running beside the retry; the first usable answer wins.
    pub hedge_on_per_try_timeout: bool,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            retry_on: RetryOn::default(),
            num_retries: 1,
            per_try_timeout: None,
            per_try_idle_timeout: None,
            back_off: (Duration::from_millis(25), Duration::from_millis(250)),
            rate_limited_back_off: None,
            retriable_status_codes: Vec::new(),
            retriable_headers: Vec::new(),
            retriable_request_headers: Vec::new(),
            previous_hosts: false,
            omit_canary_hosts: false,
            omit_host_metadata: Vec::new(),
            previous_priorities: None,
            host_selection_max_attempts: 1,
            hedge_on_per_try_timeout: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_names_cover_http_and_grpc_and_reject_unknown() {
        let on = RetryOn::parse_config(
            "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes",
        )
        .unwrap();
        assert!(on.contains(RetryOn::CONNECT_FAILURE | RetryOn::GRPC_UNAVAILABLE));
        assert!(!on.any(RetryOn::FIVE_XX));
        assert!(RetryOn::parse_config("5xx,bogus").is_err());
    }

    #[test]
    fn header_names_are_per_kind_and_unknown_ignored() {
        assert_eq!(
            RetryOn::parse_header("5xx, bogus,unavailable", false),
            RetryOn::FIVE_XX
        );
        assert_eq!(
            RetryOn::parse_header("5xx,unavailable", true),
            RetryOn::GRPC_UNAVAILABLE
        );
    }
}
