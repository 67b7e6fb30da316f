//! `envoy.filters.http.cors`: CORS policies configured per route (`CorsPolicy` in
//! `typed_per_filter_config`; route, else virtual host, else route configuration).
//! A preflight from an allowed origin is answered here; other requests from an allowed
//! origin go on and their responses get the `access-control-*` headers. Requests without
//! a policy or an `Origin` pass untouched.
use std::sync::Arc;

use http::{HeaderMap, HeaderValue, Method, Response, header};

use crate::http::{
    body::{self, Body},
    matchers::StringMatcher,
};
use crate::telemetry::stats::{Counter, Store};

/// A compiled `CorsPolicy`.
#[derive(Debug, Clone, Default)]
pub struct CorsPolicy {
    pub allow_origins: Vec<StringMatcher>,
    pub allow_methods: Option<HeaderValue>,
    pub allow_headers: Option<HeaderValue>,
    pub expose_headers: Option<HeaderValue>,
    pub max_age: Option<HeaderValue>,
    pub allow_credentials: bool,
    /// `filter_enabled` (default 100%), as parts per million.
    pub enabled_per_million: u32,
    /// `forward_not_matching_preflights` (default true): a preflight from an origin the
    /// policy does not allow goes upstream; otherwise it is answered 200 without any
    /// `access-control-*` header (as Envoy does), which browsers treat as a refusal.
    pub forward_not_matching_preflights: bool,
}

/// Envoy's `http.<prefix>.cors.*` stats.
#[derive(Debug)]
pub struct CorsStats {
    pub origin_valid: Counter,
    pub origin_invalid: Counter,
}

impl CorsStats {
    pub fn new(store: &Arc<Store>, prefix: &str) -> Self {
        let label = [("envoy_http_conn_manager_prefix", prefix)];
        let c = |stat: &str| {
            store.counter(
                format!("http.{prefix}.cors.{stat}"),
                &format!("envoy_http_cors_{stat}"),
                &label,
            )
        };
        CorsStats {
            origin_valid: c("origin_valid"),
            origin_invalid: c("origin_invalid"),
        }
    }
}

/// What the filter does with a request.
pub enum Decision<'a> {
    /// Not a CORS request for this policy (or not allowed): pass, change nothing.
    Pass,
    /// Answer now (a preflight).
    Reply(Response<Body>),
    /// Pass, and add these headers to the response.
    Decorate(ResponseHeaders<'a>),
}

/// The `access-control-*` headers an allowed request's response gets.
pub struct ResponseHeaders<'a> {
    policy: &'a CorsPolicy,
    origin: HeaderValue,
}

impl ResponseHeaders<'_> {
    pub fn apply(&self, h: &mut HeaderMap) {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, self.origin.clone());
        if self.policy.allow_credentials {
            h.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        if let Some(v) = &self.policy.expose_headers {
            h.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, v.clone());
        }
    }
}

impl CorsPolicy {
    pub fn decide<'a>(
        &'a self,
        method: &Method,
        headers: &HeaderMap,
        stats: &CorsStats,
    ) -> Decision<'a> {
        if !(self.enabled_per_million >= 1_000_000
            || fastrand::u32(..1_000_000) < self.enabled_per_million)
        {
            return Decision::Pass;
        }
        let Some(origin) = headers.get(header::ORIGIN).filter(|o| !o.is_empty()) else {
            return Decision::Pass;
        };
        let preflight = method == Method::OPTIONS
            && headers
                .get(header::ACCESS_CONTROL_REQUEST_METHOD)
                .is_some_and(|m| !m.is_empty());
        if !self.allows(origin.to_str().unwrap_or("")) {
            stats.origin_invalid.inc();
            if preflight && !self.forward_not_matching_preflights {
                let mut resp = Response::new(body::empty());
                resp.headers_mut()
                    .insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
                return Decision::Reply(resp);
            }
            return Decision::Pass;
        }
        stats.origin_valid.inc();
        let decorate = ResponseHeaders {
            policy: self,
            origin: origin.clone(),
        };
        if !preflight {
            return Decision::Decorate(decorate);
        }
        let mut resp = Response::new(body::empty());
        let h = resp.headers_mut();
        decorate.apply(h);
        // `*` is answered with what the preflight asked for (empty if it asked for
        // nothing), as Envoy does.
        let echo = |configured: &Option<HeaderValue>, asked: header::HeaderName| {
            configured.as_ref().map(|v| {
                if v == "*" {
                    headers
                        .get(asked)
                        .cloned()
                        .unwrap_or(HeaderValue::from_static(""))
                } else {
                    v.clone()
                }
            })
        };
        let methods = echo(&self.allow_methods, header::ACCESS_CONTROL_REQUEST_METHOD);
        let allow_headers = echo(&self.allow_headers, header::ACCESS_CONTROL_REQUEST_HEADERS);
        if let Some(v) = methods {
            h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, v);
        }
        if let Some(v) = allow_headers {
            h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, v);
        }
        if let Some(v) = &self.max_age {
            h.insert(header::ACCESS_CONTROL_MAX_AGE, v.clone());
        }
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
        Decision::Reply(resp)
    }

    /// An origin is allowed when a matcher matches it, or matches `*`.
    fn allows(&self, origin: &str) -> bool {
        self.allow_origins
            .iter()
            .any(|m| m.matches(origin) || m.matches("*"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::matchers::StringMatch;

    fn policy() -> CorsPolicy {
        CorsPolicy {
            allow_origins: vec![
                StringMatcher {
                    kind: StringMatch::Exact("https://app.example.com".into()),
                    ignore_case: false,
                },
                StringMatcher {
                    kind: StringMatch::Suffix(".trusted.io".into()),
                    ignore_case: false,
                },
            ],
            allow_methods: Some(HeaderValue::from_static("GET, POST")),
            expose_headers: Some(HeaderValue::from_static("x-exposed")),
            allow_credentials: true,
            enabled_per_million: 1_000_000,
            forward_not_matching_preflights: true,
            ..Default::default()
        }
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    http::HeaderName::from_static(k),
                    HeaderValue::from_static(v),
                )
            })
            .collect()
    }

    #[test]
    fn preflight_answered_only_for_allowed_origins() {
        let stats = CorsStats::new(&Store::new(), "t");
        let p = policy();
        let pre = headers(&[
            ("origin", "https://x.trusted.io"),
            ("access-control-request-method", "PUT"),
        ]);
        let Decision::Reply(resp) = p.decide(&Method::OPTIONS, &pre, &stats) else {
            panic!("an allowed preflight is answered");
        };
        assert_eq!(resp.status(), 200);
        let h = resp.headers();
        assert_eq!(h["access-control-allow-origin"], "https://x.trusted.io");
        assert_eq!(h["access-control-allow-methods"], "GET, POST");
        assert_eq!(h["access-control-allow-credentials"], "true");
        assert_eq!(h["access-control-expose-headers"], "x-exposed");
        let bad = headers(&[
            ("origin", "https://evil.com"),
            ("access-control-request-method", "PUT"),
        ]);
        assert!(matches!(
            p.decide(&Method::OPTIONS, &bad, &stats),
            Decision::Pass
        ));
        let strict = CorsPolicy {
            forward_not_matching_preflights: false,
            ..policy()
        };
        let Decision::Reply(resp) = strict.decide(&Method::OPTIONS, &bad, &stats) else {
            panic!("a refused preflight is answered when not forwarded");
        };
        assert_eq!(resp.status(), 200);
        assert!(!resp.headers().contains_key("access-control-allow-origin"));
        assert_eq!(stats.origin_valid.get(), 1);
        assert_eq!(stats.origin_invalid.get(), 2);
    }

    #[test]
    fn actual_requests_are_decorated() {
        let stats = CorsStats::new(&Store::new(), "t");
        let p = policy();
        let req = headers(&[("origin", "https://app.example.com")]);
        let Decision::Decorate(d) = p.decide(&Method::GET, &req, &stats) else {
            panic!("an allowed request is decorated");
        };
        let mut h = HeaderMap::new();
        d.apply(&mut h);
        assert_eq!(h["access-control-allow-origin"], "https://app.example.com");
        assert!(!h.contains_key("access-control-allow-methods"));
        assert!(matches!(
            p.decide(&Method::GET, &HeaderMap::new(), &stats),
            Decision::Pass
        ));
    }
}
