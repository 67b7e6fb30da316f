//! One request's retries: whether an attempt's outcome is retried, how many retries
//! remain, how long to back off, and which hosts were tried — Envoy's rules.
use std::{net::SocketAddr, sync::Arc, time::Duration};

use http::{HeaderMap, HeaderName, StatusCode};

use super::policy::{ResetFormat, RetryOn, RetryPolicy};
use crate::{
    config::LbMetadata,
    http::matchers::{HeaderMatch, HeaderMatcher, RequestHead},
    telemetry::scopes::VclusterStats,
    upstream::{
        cluster::{Cluster, RetryPermit},
        host::Host,
    },
};

/// How an attempt failed without a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// No connection could be made (refused, or the connect timed out).
    ConnectFailure,
    /// The connection or stream ended before response headers; `refused` when HTTP/2
    /// refused the stream.
    Reset { refused: bool },
    /// The attempt's `per_try_timeout` or `per_try_idle_timeout` passed.
    PerTryTimeout,
    /// A circuit breaker was open: never retried, as in Envoy.
    Overflow,
}

/// What to do after an attempt.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// Try again after this wait.
    Retry(Duration),
    /// The outcome is not one the policy retries.
    No,
    /// It is, but no retries remain (`URX`).
    LimitExceeded,
    /// It is, but the cluster's retry breaker or budget is full (`UO`).
    Overflow,
}

/// The state of one request's retries.
#[derive(Debug)]
pub struct RetryState<'a> {
    policy: &'a RetryPolicy,
    on: RetryOn,
    remaining: u32,
    /// `x-envoy-retriable-status-codes`, added to the policy's.
    extra_codes: Vec<u16>,
    /// `x-envoy-retriable-header-names`, added to the policy's `retriable_headers`.
    extra_headers: Vec<HeaderName>,
    /// The next exponential back-off ceiling (Envoy's jittered exponential strategy).
    next_backoff: Duration,
    /// Hosts tried so far, for `previous_hosts`.
    pub tried: Vec<SocketAddr>,
    /// `previous_priorities`: the tried hosts' priority levels, and the levels left out.
    pub tried_priorities: Vec<u32>,
    excluded: Option<Vec<bool>>,
    /// The retry breaker's slot, held from a retry's scheduling until its outcome.
    permit: Option<RetryPermit>,
    pub retries: u32,
    /// The scheduled retry waits on a rate-limit reset header (else the back-off).
    rate_limited: bool,
    /// The request's virtual cluster, which counts its retries too.
    vcluster: Option<Arc<VclusterStats>>,
    /// An attempt has reached the upstream (had a connection): `reset-before-request`
    /// no longer applies, to this attempt or any later one (as Envoy).
    started: bool,
}

impl<'a> RetryState<'a> {
    /// The retry state of a request, or `None` when nothing would ever be retried: no
    /// conditions (from the policy or, when the request is trusted, its headers), or
    /// the request matches none of `retriable_request_headers`.
    pub fn new(
        policy: &'a RetryPolicy,
        req: &RequestHead<'_>,
        trusted: Option<&HeaderMap>,
        vcluster: Option<Arc<VclusterStats>>,
    ) -> Option<Self> {
        let mut on = policy.retry_on;
        let mut remaining = policy.num_retries;
        let mut extra_codes = Vec::new();
        let mut extra_headers = Vec::new();
        if let Some(h) = trusted {
            let text = |name: &str| h.get(name).and_then(|v| v.to_str().ok());
            if let Some(v) = text("x-envoy-retry-on") {
                on = on | RetryOn::parse_header(v, false);
            }
            if let Some(v) = text("x-envoy-retry-grpc-on") {
                on = on | RetryOn::parse_header(v, true);
            }
            if let Some(v) = text("x-envoy-retriable-status-codes") {
                extra_codes = v.split(',').filter_map(|c| c.trim().parse().ok()).collect();
            }
            if let Some(v) = text("x-envoy-retriable-header-names") {
                extra_headers = v
                    .split(',')
                    .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
                    .collect();
            }
            if !on.is_empty()
                && let Some(n) = text("x-envoy-max-retries").and_then(|v| v.parse().ok())
            {
                remaining = n;
            }
        }
        if on.is_empty() {
            return None;
        }
        if !policy.retriable_request_headers.is_empty()
            && !policy
                .retriable_request_headers
                .iter()
                .any(|m| m.matches(req))
        {
            return None;
        }
        Some(RetryState {
            policy,
            on,
            remaining,
            extra_codes,
            extra_headers,
            next_backoff: policy.back_off.0,
            tried: Vec::new(),
            tried_priorities: Vec::new(),
            excluded: None,
            permit: None,
            retries: 0,
            rate_limited: false,
            vcluster,
            started: false,
        })
    }

    pub fn policy(&self) -> &RetryPolicy {
        self.policy
    }

    /// Whether a response with these headers is one the policy retries.
    pub fn retriable_response(&self, status: StatusCode, h: &HeaderMap) -> bool {
        let on = self.on;
        // A response rate-limited by an upstream Envoy is retried only on
        // `envoy-ratelimited`, whatever its status.
        if h.contains_key("x-envoy-ratelimited") {
            return on.contains(RetryOn::ENVOY_RATELIMITED);
        }
        let code = status.as_u16();
        (on.contains(RetryOn::FIVE_XX) && status.is_server_error())
            || (on.contains(RetryOn::GATEWAY_ERROR) && matches!(code, 502..=504))
            || (on.contains(RetryOn::RETRIABLE_4XX) && code == 409)
            || (on.contains(RetryOn::RETRIABLE_STATUS_CODES)
                && (self.policy.retriable_status_codes.contains(&code)
                    || self.extra_codes.contains(&code)))
            || (on.contains(RetryOn::RETRIABLE_HEADERS) && self.header_matches(h))
            || self.grpc_retriable(h)
    }

    fn header_matches(&self, h: &HeaderMap) -> bool {
        let head = RequestHead {
            method: "",
            scheme: "",
            authority: "",
            path_and_query: "",
            headers: h,
        };
        self.policy
            .retriable_headers
            .iter()
            .any(|m| m.matches(&head))
            || self.extra_headers.iter().any(|n| {
                HeaderMatcher {
                    name: n.as_str().to_owned(),
                    kind: HeaderMatch::Any,
                    invert: false,
                    treat_missing_as_empty: false,
                }
                .matches(&head)
            })
    }

    /// The gRPC conditions, on a `grpc-status` in the response headers (a
    /// trailers-only response), as Envoy reads it.
    fn grpc_retriable(&self, h: &HeaderMap) -> bool {
        let Some(status) = h
            .get("grpc-status")
            .and_then(|v| v.to_str().ok()?.parse::<u32>().ok())
        else {
            return false;
        };
        let on = self.on;
        match status {
            1 => on.contains(RetryOn::GRPC_CANCELLED),
            4 => on.contains(RetryOn::GRPC_DEADLINE_EXCEEDED),
            8 => on.contains(RetryOn::GRPC_RESOURCE_EXHAUSTED),
            13 => on.contains(RetryOn::GRPC_INTERNAL),
            14 => on.contains(RetryOn::GRPC_UNAVAILABLE),
            _ => false,
        }
    }

    /// Whether a failure without a response is one the policy retries (Envoy's
    /// reset rules: `5xx`, `gateway-error` and `reset` take any reset, a per-try
    /// timeout included; the narrower conditions their own kind).
    pub fn retriable_failure(&self, f: Failure) -> bool {
        let on = self.on;
        if f == Failure::Overflow {
            return false;
        }
        if on.any(RetryOn::FIVE_XX | RetryOn::GATEWAY_ERROR | RetryOn::RESET) {
            return true;
        }
        match f {
            Failure::ConnectFailure => {
                on.contains(RetryOn::CONNECT_FAILURE)
                    || (on.contains(RetryOn::RESET_BEFORE_REQUEST) && !self.started)
            }
            Failure::Reset { refused } => refused && on.contains(RetryOn::REFUSED_STREAM),
            Failure::PerTryTimeout | Failure::Overflow => false,
        }
    }

    /// After a response: retry it, or not, and why not.
    pub fn on_response(
        &mut self,
        status: StatusCode,
        h: &HeaderMap,
        cluster: &Cluster,
    ) -> Decision {
        self.started = true;
        let retriable = self.retriable_response(status, h);
        let wait = retriable.then(|| self.rate_limited_wait(h)).flatten();
        let d = self.decide(retriable, wait, cluster);
        if matches!(d, Decision::Retry(_)) {
            cluster
                .stats
                .retry_upstream_rq
                .record_completed(status.as_u16());
        }
        d
    }

    /// After a failure without a response.
    pub fn on_failure(&mut self, f: Failure, cluster: &Cluster) -> Decision {
        let retriable = self.retriable_failure(f);
        if f != Failure::ConnectFailure {
            self.started = true;
        }
        self.decide(retriable, None, cluster)
    }

    /// Hedging: an attempt passed its per-try timeout and keeps running; another goes
    /// out beside it whenever retries remain, whatever `retry_on` says (as Envoy).
    pub fn on_hedge(&mut self, cluster: &Cluster) -> Decision {
        self.started = true;
        self.decide(true, None, cluster)
    }

    fn decide(&mut self, retriable: bool, wait: Option<Duration>, cluster: &Cluster) -> Decision {
        let stats = &cluster.stats;
        // A retry that was scheduled ends here; if this outcome is not retried, the
        // retry succeeded (Envoy counts it so, whatever the outcome).
        let vc = self.vcluster.as_deref();
        if self.permit.take().is_some() && !retriable {
            stats.upstream_rq_retry_success.inc();
            vc.inspect(|v| v.upstream_rq_retry_success.inc());
        }
        if !retriable {
            return Decision::No;
        }
        if self.remaining == 0 {
            stats.upstream_rq_retry_limit_exceeded.inc();
            vc.inspect(|v| v.upstream_rq_retry_limit_exceeded.inc());
            return Decision::LimitExceeded;
        }
        self.remaining -= 1;
        let Some(permit) = cluster.retry_permit() else {
            stats.upstream_rq_retry_overflow.inc();
            vc.inspect(|v| v.upstream_rq_retry_overflow.inc());
            return Decision::Overflow;
        };
        self.permit = Some(permit);
        self.retries += 1;
        self.rate_limited = wait.is_some();
        Decision::Retry(wait.unwrap_or_else(|| self.backoff()))
    }

    /// The retry's back-off ended and it goes out: counted now, as Envoy counts it (a
    /// retry the route timeout or the buffer limit cancels while it waits is not).
    pub fn started(&self, cluster: &Cluster) {
        let stats = &cluster.stats;
        stats.upstream_rq_retry.inc();
        if let Some(v) = &self.vcluster {
            v.upstream_rq_retry.inc();
        }
        if self.rate_limited {
            stats.upstream_rq_retry_backoff_ratelimited.inc();
        } else {
            stats.upstream_rq_retry_backoff_exponential.inc();
        }
    }

    /// Envoy's jittered exponential back-off: a random wait below the current
    /// ceiling, which starts at the base and doubles up to the maximum.
    fn backoff(&mut self) -> Duration {
        let (_, max) = self.policy.back_off;
        let ceiling = self.next_backoff;
        self.next_backoff = if ceiling < max / 2 { ceiling * 2 } else { max };
        let ms = ceiling.as_millis() as u64;
        Duration::from_millis(if ms == 0 { 0 } else { fastrand::u64(..ms) }).min(max)
    }

    /// `rate_limited_retry_back_off`: the first reset header that parses to more than
    /// 1 ms and at most `max_interval` gives the interval; the wait is random between
    /// it and one and a half times it, as Envoy jitters it.
    fn rate_limited_wait(&self, h: &HeaderMap) -> Option<Duration> {
        let interval = self.rate_limited_interval(h)?;
        let ms = interval.as_millis() as u64;
        Some(Duration::from_millis(ms + fastrand::u64(..(ms / 2).max(1))))
    }

    fn rate_limited_interval(&self, h: &HeaderMap) -> Option<Duration> {
        let rl = self.policy.rate_limited_back_off.as_ref()?;
        rl.reset_headers.iter().find_map(|(name, format)| {
            let v: u64 = h.get(name)?.to_str().ok()?.trim().parse().ok()?;
            let wait = match format {
                ResetFormat::Seconds => Duration::from_secs(v),
                ResetFormat::UnixTimestamp => {
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .ok()?;
                    Duration::from_secs(v).checked_sub(now)?
                }
            };
            (wait > Duration::from_millis(1) && wait <= rl.max_interval).then_some(wait)
        })
    }

    /// Whether the retry host predicates turn `host` down: `previous_hosts` (tried
    /// already), `omit_canary_hosts` (a canary), `omit_host_metadata` (its `envoy.lb`
    /// metadata has every listed value).
    pub fn rejects(&self, host: &Host) -> bool {
        let p = self.policy;
        if p.previous_hosts && self.tried.contains(&host.addr) {
            return true;
        }
        if !p.omit_canary_hosts && p.omit_host_metadata.is_empty() {
            return false;
        }
        let attrs = host.attrs();
        (p.omit_canary_hosts && attrs.canary)
            || (!p.omit_host_metadata.is_empty()
                && attrs
                    .lb_metadata
                    .as_deref()
                    .is_some_and(|m| metadata_matches(&p.omit_host_metadata, m)))
    }

    /// With `previous_priorities`, the priority levels to leave out of the next pick:
    /// recomputed every `update_frequency` attempts from the tried hosts' priorities,
    /// kept in between, as Envoy's retry priority does.
    pub fn excluded_priorities(&mut self, tried_priorities: &[u32]) -> Option<&[bool]> {
        let every = self.policy.previous_priorities? as usize;
        let n = tried_priorities.len();
        if n < every {
            return None;
        }
        if n.is_multiple_of(every) {
            let levels = tried_priorities.iter().max().map_or(0, |m| *m as usize + 1);
            let mut excluded = vec![false; levels];
            for &p in tried_priorities {
                excluded[p as usize] = true;
            }
            self.excluded = Some(excluded);
        }
        self.excluded.as_deref()
    }
}

/// Envoy's metadata label match with lists read as any-of: every `(key, value)` is in
/// `m`, equal to it or to an element of it when it is a list.
fn metadata_matches(want: &[(String, serde_json::Value)], m: &LbMetadata) -> bool {
    want.iter().all(|(k, v)| match m.get(k) {
        Some(serde_json::Value::Array(items)) => items.contains(v),
        Some(have) => have == v,
        None => false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{config::ClusterConfig, telemetry::stats::Store};

    fn cluster(max_retries: u32) -> Cluster {
        let mut config = ClusterConfig {
            name: "c".into(),
            ..Default::default()
        };
        config.breakers.default.max_retries = max_retries;
        Cluster::new(config, &Store::new(), &Default::default())
    }

    fn head(h: &HeaderMap) -> RequestHead<'_> {
        RequestHead {
            method: "GET",
            scheme: "http",
            authority: "a",
            path_and_query: "/",
            headers: h,
        }
    }

    /// istiod's default: retry_on with gRPC names, 2 retries, 503 retriable.
    fn istio() -> RetryPolicy {
        RetryPolicy {
            retry_on: RetryOn::parse_config(
                "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes",
            )
            .unwrap(),
            num_retries: 2,
            retriable_status_codes: vec![503],
            previous_hosts: true,
            host_selection_max_attempts: 5,
            ..Default::default()
        }
    }

    #[test]
    fn host_predicates_reject_tried_canary_and_matching_metadata_hosts() {
        use crate::config::EndpointAttrs;
        let host = |port: u16, canary: bool, meta: Option<serde_json::Value>| {
            Host::with(
                SocketAddr::from(([127, 0, 0, 1], port)),
                None,
                None,
                EndpointAttrs {
                    canary,
                    lb_metadata: meta
                        .map(|m| std::sync::Arc::new(serde_json::from_value(m).unwrap())),
                    ..Default::default()
                },
            )
        };
        let v1 = host(
            1,
            false,
            Some(serde_json::json!({"version": "v1", "x": 1.0})),
        );
        let v2 = host(2, false, Some(serde_json::json!({"version": ["v2", "v3"]})));
        let bare = host(3, false, None);
        let canary = host(4, true, None);
        let h = HeaderMap::new();
        let p = RetryPolicy {
            retry_on: RetryOn::FIVE_XX,
            omit_canary_hosts: true,
            omit_host_metadata: vec![("version".into(), "v3".into())],
            ..Default::default()
        };
        let s = RetryState::new(&p, &head(&h), None, None).unwrap();
        assert!(s.rejects(&canary));
        assert!(s.rejects(&v2), "a list value matches any of its elements");
        assert!(!s.rejects(&v1));
        assert!(!s.rejects(&bare), "no envoy.lb metadata: never omitted");
        let p = RetryPolicy {
            retry_on: RetryOn::FIVE_XX,
            omit_host_metadata: vec![("version".into(), "v1".into()), ("x".into(), 1.0.into())],
            ..Default::default()
        };
        let s = RetryState::new(&p, &head(&h), None, None).unwrap();
        assert!(s.rejects(&v1), "every listed value must match");
        assert!(!s.rejects(&canary) && !s.rejects(&v2));
        let p = RetryPolicy {
            retry_on: RetryOn::FIVE_XX,
            previous_hosts: true,
            ..Default::default()
        };
        let mut s = RetryState::new(&p, &head(&h), None, None).unwrap();
        s.tried.push(bare.addr);
        assert!(s.rejects(&bare) && !s.rejects(&v1));
    }

    #[test]
    fn istio_default_retries_503_twice_then_gives_up() {
        let p = istio();
        let h = HeaderMap::new();
        let c = cluster(3);
        let mut s = RetryState::new(&p, &head(&h), None, None).unwrap();
        let r = HeaderMap::new();
        for _ in 0..2 {
            assert!(matches!(
                s.on_response(StatusCode::SERVICE_UNAVAILABLE, &r, &c),
                Decision::Retry(_)
            ));
            // Counted when the retry goes out, after its back-off.
            s.started(&c);
        }
        assert_eq!(
            s.on_response(StatusCode::SERVICE_UNAVAILABLE, &r, &c),
            Decision::LimitExceeded
        );
        assert_eq!(c.stats.upstream_rq_retry.get(), 2);
        assert_eq!(c.stats.upstream_rq_retry_limit_exceeded.get(), 1);
        assert_eq!(c.stats.upstream_rq_retry_success.get(), 0);
    }

    #[test]
    fn what_each_condition_retries() {
        let h = HeaderMap::new();
        let c = cluster(u32::MAX);
        let state = |on: &str| {
            let p = Box::leak(Box::new(RetryPolicy {
                retry_on: RetryOn::parse_config(on).unwrap(),
                ..Default::default()
            }));
            RetryState::new(p, &head(&h), None, None).unwrap()
        };
        let r = HeaderMap::new();
        let s = state("5xx");
        assert!(s.retriable_response(StatusCode::INTERNAL_SERVER_ERROR, &r));
        assert!(s.retriable_failure(Failure::PerTryTimeout));
        assert!(s.retriable_failure(Failure::Reset { refused: false }));
        let s = state("gateway-error");
        assert!(!s.retriable_response(StatusCode::INTERNAL_SERVER_ERROR, &r));
        assert!(s.retriable_response(StatusCode::GATEWAY_TIMEOUT, &r));
        let s = state("reset");
        assert!(!s.retriable_response(StatusCode::SERVICE_UNAVAILABLE, &r));
        assert!(s.retriable_failure(Failure::ConnectFailure));
        let mut s = state("reset-before-request");
        assert!(s.retriable_failure(Failure::ConnectFailure));
        // Once an attempt reached the upstream, no later one is "before request".
        s.started = true;
        assert!(!s.retriable_failure(Failure::ConnectFailure));
        let s = state("connect-failure");
        assert!(s.retriable_failure(Failure::ConnectFailure));
        assert!(!s.retriable_failure(Failure::Reset { refused: true }));
        assert!(!s.retriable_failure(Failure::PerTryTimeout));
        let s = state("refused-stream");
        assert!(s.retriable_failure(Failure::Reset { refused: true }));
        assert!(!s.retriable_failure(Failure::Reset { refused: false }));
        let s = state("retriable-4xx");
        assert!(s.retriable_response(StatusCode::CONFLICT, &r));
        assert!(!s.retriable_response(StatusCode::NOT_FOUND, &r));
        let mut grpc = HeaderMap::new();
        grpc.insert("grpc-status", "14".parse().unwrap());
        assert!(state("unavailable").retriable_response(StatusCode::OK, &grpc));
        assert!(!state("cancelled").retriable_response(StatusCode::OK, &grpc));
        let mut limited = HeaderMap::new();
        limited.insert("x-envoy-ratelimited", "true".parse().unwrap());
        assert!(!state("5xx").retriable_response(StatusCode::TOO_MANY_REQUESTS, &limited));
        assert!(state("envoy-ratelimited").retriable_response(StatusCode::OK, &limited));
        let _ = c;
    }

    #[test]
    fn a_retried_attempt_that_is_not_retried_again_counts_a_success() {
        let p = istio();
        let h = HeaderMap::new();
        let c = cluster(3);
        let mut s = RetryState::new(&p, &head(&h), None, None).unwrap();
        assert!(matches!(
            s.on_failure(Failure::ConnectFailure, &c),
            Decision::Retry(_)
        ));
        assert_eq!(
            s.on_response(StatusCode::OK, &HeaderMap::new(), &c),
            Decision::No
        );
        assert_eq!(c.stats.upstream_rq_retry_success.get(), 1);
    }

    #[test]
    fn the_breaker_holds_a_retry_until_its_outcome() {
        let p = istio();
        let h = HeaderMap::new();
        let c = cluster(1);
        let mut a = RetryState::new(&p, &head(&h), None, None).unwrap();
        let mut b = RetryState::new(&p, &head(&h), None, None).unwrap();
        assert!(matches!(
            a.on_failure(Failure::ConnectFailure, &c),
            Decision::Retry(_)
        ));
        assert_eq!(
            b.on_failure(Failure::ConnectFailure, &c),
            Decision::Overflow
        );
        assert_eq!(c.stats.upstream_rq_retry_overflow.get(), 1);
        // a's retry answered: the slot is free again.
        a.on_response(StatusCode::OK, &HeaderMap::new(), &c);
        let mut d = RetryState::new(&p, &head(&h), None, None).unwrap();
        assert!(matches!(
            d.on_failure(Failure::ConnectFailure, &c),
            Decision::Retry(_)
        ));
    }

    #[test]
    fn only_requests_matching_retriable_request_headers_are_retried() {
        let p = RetryPolicy {
            retry_on: RetryOn::FIVE_XX,
            retriable_request_headers: vec![HeaderMatcher {
                name: "x-retry-me".into(),
                kind: HeaderMatch::Present(true),
                invert: false,
                treat_missing_as_empty: false,
            }],
            ..Default::default()
        };
        let mut h = HeaderMap::new();
        assert!(RetryState::new(&p, &head(&h), None, None).is_none());
        h.insert("x-retry-me", "1".parse().unwrap());
        assert!(RetryState::new(&p, &head(&h), None, None).is_some());
    }

    #[test]
    fn headers_widen_the_policy_when_trusted() {
        let p = RetryPolicy::default();
        let mut h = HeaderMap::new();
        assert!(RetryState::new(&p, &head(&h), Some(&h), None).is_none());
        h.insert("x-envoy-retry-on", "5xx".parse().unwrap());
        h.insert("x-envoy-max-retries", "3".parse().unwrap());
        assert!(RetryState::new(&p, &head(&h), None, None).is_none());
        let s = RetryState::new(&p, &head(&h), Some(&h), None).unwrap();
        assert_eq!(s.remaining, 3);
        assert!(s.retriable_response(StatusCode::BAD_GATEWAY, &HeaderMap::new()));
    }

    #[test]
    fn backoff_ceiling_doubles_to_the_cap_and_waits_stay_below_it() {
        let p = RetryPolicy::default();
        let h = HeaderMap::new();
        let mut s = RetryState::new(
            &p,
            &head(&h),
            Some(&{
                let mut t = HeaderMap::new();
                t.insert("x-envoy-retry-on", "5xx".parse().unwrap());
                t
            }),
            None,
        )
        .unwrap();
        let mut ceilings = Vec::new();
        for _ in 0..6 {
            ceilings.push(s.next_backoff.as_millis());
            let w = s.backoff();
            assert!(w < Duration::from_millis(250));
        }
        assert_eq!(ceilings, [25, 50, 100, 200, 250, 250]);
    }

    #[test]
    fn rate_limited_backoff_reads_reset_headers_within_the_cap() {
        use super::super::policy::RateLimitedBackOff;
        let p = RetryPolicy {
            retry_on: RetryOn::parse_config("retriable-status-codes").unwrap(),
            retriable_status_codes: vec![429],
            rate_limited_back_off: Some(RateLimitedBackOff {
                reset_headers: vec![(HeaderName::from_static("retry-after"), ResetFormat::Seconds)],
                max_interval: Duration::from_secs(5),
            }),
            ..Default::default()
        };
        let h = HeaderMap::new();
        let c = cluster(3);
        let mut s = RetryState::new(&p, &head(&h), None, None).unwrap();
        let mut r = HeaderMap::new();
        r.insert("retry-after", "2".parse().unwrap());
        let Decision::Retry(wait) = s.on_response(StatusCode::TOO_MANY_REQUESTS, &r, &c) else {
            panic!("not retried");
        };
        assert!(wait >= Duration::from_secs(2) && wait < Duration::from_secs(3));
        assert_eq!(c.stats.upstream_rq_retry_backoff_ratelimited.get(), 0);
        s.started(&c);
        assert_eq!(c.stats.upstream_rq_retry_backoff_ratelimited.get(), 1);
        assert_eq!(c.stats.upstream_rq_retry_backoff_exponential.get(), 0);
    }
}
