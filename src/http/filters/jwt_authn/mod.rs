//! `envoy.filters.http.jwt_authn`: JSON Web Tokens checked against providers (issuer,
//! audiences, keys), as Istio's RequestAuthentication renders them, with Envoy's
//! requirement logic (`requires_any`, `requires_all`, `allow_missing`,
//! `allow_missing_or_failed`), its 401/403 answers and its outputs: the payload in
//! dynamic metadata (which RBAC's `metadata` principals read), `forward_payload_header`,
//! `claim_to_headers`, and the token removed unless `forward`.
mod extract;
pub mod jwks;
pub mod remote;
pub mod token;

use std::{
    collections::BTreeMap,
    sync::{Arc, OnceLock},
    time::{Duration, SystemTime},
};

use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode, header};
use serde_json::Value;

pub use extract::Location;
use extract::Token;
use jwks::Jwks;
use remote::{FetchStats, RemoteJwks};
use token::{Jwt, Status};

use crate::{
    config::RouteMatch,
    http::{
        body::{self, Body},
        dynamic_metadata::{DynamicMetadata, JWT_AUTHN},
        local_reply::{ResponseFlag, Text},
        matchers::{RequestHead, StringMatcher},
        request_checks::Details,
    },
    telemetry::stats::{Counter, Store},
    upstream::manager::{ClusterManager, ClusterMap},
};

/// One `JwtProvider`.
#[derive(Debug)]
pub struct Provider {
    pub name: String,
    /// Empty: any issuer.
    pub issuer: String,
    pub audiences: Vec<String>,
    pub subjects: Option<StringMatcher>,
    pub locations: Vec<Location>,
    pub forward: bool,
    pub forward_payload_header: Option<HeaderName>,
    pub pad_forward_payload_header: bool,
    pub payload_in_metadata: Option<String>,
    pub header_in_metadata: Option<String>,
    pub failed_status_in_metadata: Option<String>,
    /// `normalize_payload_in_metadata.space_delimited_claims`.
    pub space_delimited_claims: Vec<String>,
    /// `claim_to_headers`: header and the claim's path (`a.b` → `["a", "b"]`).
    pub claim_to_headers: Vec<(HeaderName, Vec<String>)>,
    pub clock_skew: u64,
    pub require_expiration: bool,
    pub max_lifetime: Option<Duration>,
    pub keys: Keys,
}

#[derive(Debug)]
pub enum Keys {
    Local(Arc<Jwks>),
    Remote(Arc<RemoteJwks>),
}

/// A `JwtRequirement`.
#[derive(Debug, Clone)]
pub enum Requirement {
    /// `provider_name` / `provider_and_audiences` (audiences replacing the provider's).
    Provider {
        name: String,
        audiences: Option<Vec<String>>,
    },
    /// `requires_any`; `allow_missing` and `allow_missing_or_failed` entries are flags.
    Any {
        children: Vec<Requirement>,
        allow_missing: bool,
        allow_missing_or_failed: bool,
    },
    All(Vec<Requirement>),
    AllowMissing,
    AllowMissingOrFailed,
    /// Nothing required.
    None,
}

/// A compiled `JwtAuthentication`.
#[derive(Debug)]
pub struct JwtAuthnConfig {
    pub providers: BTreeMap<String, Arc<Provider>>,
    /// `rules`, first match wins; a rule without `requires` verifies nothing.
    pub rules: Vec<(RouteMatch, Option<Requirement>)>,
    pub requirement_map: BTreeMap<String, Requirement>,
    pub bypass_cors_preflight: bool,
    pub strip_failure_response: bool,
    /// `stat_prefix`: the counters go under `jwt_authn.<stat_prefix>.`.
    pub stat_prefix: String,
}

/// `PerRouteConfig`.
#[derive(Debug, Clone)]
pub enum PerRoute {
    Disabled,
    RequirementName(String),
}

#[derive(Debug)]
pub struct JwtAuthnStats {
    allowed: Counter,
    denied: Counter,
    cors_preflight_bypassed: Counter,
    jwt_cache_miss: Counter,
    fetch: FetchStats,
}

impl JwtAuthnStats {
    /// `http.<prefix>.jwt_authn.*`.
    pub fn new(store: &Arc<Store>, hcm_prefix: &str, cfg: &JwtAuthnConfig) -> Self {
        let scope = match cfg.stat_prefix.as_str() {
            "" => format!("http.{hcm_prefix}.jwt_authn."),
            p => format!("http.{hcm_prefix}.jwt_authn.{p}."),
        };
        let c = |n: &str| store.counter_tagged_by_default(format!("{scope}{n}"));
        // Never counted: pilotfish keeps no verified-token cache (`jwt_cache_config`
        // is refused), but Envoy shows the counter.
        c("jwt_cache_hit");
        JwtAuthnStats {
            allowed: c("allowed"),
            denied: c("denied"),
            cors_preflight_bypassed: c("cors_preflight_bypassed"),
            jwt_cache_miss: c("jwt_cache_miss"),
            fetch: FetchStats {
                success: c("jwks_fetch_success"),
                failed: c("jwks_fetch_failed"),
            },
        }
    }
}

/// What the filter does to an allowed request.
#[derive(Debug, Default)]
pub struct Outputs {
    /// Headers removed before verification (client copies of output headers) and
    /// after it (tokens not forwarded).
    pub remove: Vec<HeaderName>,
    /// Query parameters carrying tokens not forwarded.
    pub remove_params: Vec<String>,
    pub add: Vec<(HeaderName, HeaderValue)>,
}

impl Outputs {
    /// Applies the outputs to the request about to go upstream.
    pub fn apply<B>(&self, req: &mut http::Request<B>) {
        let h = req.headers_mut();
        for name in &self.remove {
            h.remove(name);
        }
        for (name, value) in &self.add {
            h.append(name.clone(), value.clone());
        }
        if !self.remove_params.is_empty()
            && let Some(pq) = req.uri().path_and_query()
        {
            let stripped = extract::strip_params(pq.as_str(), &self.remove_params);
            let mut parts = req.uri().clone().into_parts();
            if let Ok(pq) = stripped.parse() {
                parts.path_and_query = Some(pq);
                if let Ok(uri) = http::Uri::from_parts(parts) {
                    *req.uri_mut() = uri;
                }
            }
        }
    }
}

pub enum Verdict {
    Allow(Outputs),
    Reply(Response<Body>),
}

/// The request as the filter sees it.
pub struct Request<'a> {
    pub head: &'a RequestHead<'a>,
    pub scheme: &'a str,
}

impl JwtAuthnConfig {
    /// Starts the background refresh of every `async_fetch` key set.
    pub fn start(&self, clusters: &Arc<ClusterManager>, stats: &JwtAuthnStats) {
        for p in self.providers.values() {
            if let Keys::Remote(r) = &p.keys {
                RemoteJwks::keep_fresh(r, clusters.clone(), stats.fetch.clone());
            }
        }
    }

    /// Checks a request; the dynamic metadata gets what verified tokens leave.
    pub async fn check(
        &self,
        clusters: &ClusterMap,
        req: Request<'_>,
        per_route: Option<&PerRoute>,
        metadata: &mut DynamicMetadata,
        stats: &JwtAuthnStats,
    ) -> Verdict {
        let h = req.head.headers;
        if self.bypass_cors_preflight
            && req.head.method == "OPTIONS"
            && h.get(header::ORIGIN).is_some_and(|v| !v.is_empty())
            && h.get(header::ACCESS_CONTROL_REQUEST_METHOD)
                .is_some_and(|v| !v.is_empty())
        {
            stats.cors_preflight_bypassed.inc();
            stats.allowed.inc();
            return Verdict::Allow(Outputs::default());
        }
        let requirement = match per_route {
            Some(PerRoute::Disabled) => None,
            Some(PerRoute::RequirementName(n)) => match self.requirement_map.get(n) {
                Some(r) => Some(r),
                None => {
                    stats.denied.inc();
                    return Verdict::Reply(self.wrong_requirement(n));
                }
            },
            None => self
                .rules
                .iter()
                .find(|(m, _)| m.matches(req.head))
                .and_then(|(_, r)| r.as_ref()),
        };
        let Some(requirement) = requirement else {
            stats.allowed.inc();
            return Verdict::Allow(Outputs::default());
        };
        let mut run = Run {
            config: self,
            clusters,
            headers: h,
            path: req.head.path_and_query,
            outputs: Outputs::default(),
            metadata: Vec::new(),
            failed_provider: None,
            stats,
            now: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default(),
        };
        run.sanitize(requirement);
        let status = run.verify(requirement).await;
        for (key, value) in run.metadata.drain(..) {
            metadata.set(JWT_AUTHN, key, value);
        }
        match status {
            Ok(()) => {
                stats.allowed.inc();
                Verdict::Allow(run.outputs)
            }
            Err(s) => {
                if let Some(key) = run
                    .failed_provider
                    .and_then(|p| p.failed_status_in_metadata.clone())
                {
                    metadata.set(
                        JWT_AUTHN,
                        key,
                        serde_json::json!({"code": s as i32, "message": s.text()}),
                    );
                }
                stats.denied.inc();
                Verdict::Reply(self.deny(s, &req))
            }
        }
    }

    /// 401 (403 for audiences) with the status as body and a `www-authenticate` header.
    fn deny(&self, s: Status, req: &Request<'_>) -> Response<Body> {
        let code = if s == Status::AudienceNotAllowed {
            StatusCode::FORBIDDEN
        } else {
            StatusCode::UNAUTHORIZED
        };
        let text = if self.strip_failure_response {
            ""
        } else {
            s.text()
        };
        let mut resp = crate::http::local_reply::with_body(code, text, ResponseFlag::NoFlag);
        resp.extensions_mut().insert(Details(details(s)));
        if !self.strip_failure_response {
            let mut uri = format!(
                "{}://{}{}",
                req.scheme, req.head.authority, req.head.path_and_query
            );
            if uri.len() > 256 {
                let mut cut = 256;
                while !uri.is_char_boundary(cut) {
                    cut -= 1;
                }
                uri.truncate(cut);
            }
            let value = if s == Status::Missing {
                format!("Bearer realm=\"{uri}\"")
            } else {
                format!("Bearer realm=\"{uri}\", error=\"invalid_token\"")
            };
            if let Ok(v) = HeaderValue::from_str(&value) {
                resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
            }
        }
        resp
    }

    /// 403 for a per-route `requirement_name` the filter does not know.
    fn wrong_requirement(&self, name: &str) -> Response<Body> {
        let names: Vec<&str> = self.requirement_map.keys().map(String::as_str).collect();
        let text = format!(
            "Failed JWT authentication: Wrong requirement_name: {name}. It should be one of [{}]",
            names.join(",")
        );
        let mut resp = Response::new(body::full(text.clone()));
        *resp.status_mut() = StatusCode::FORBIDDEN;
        let h = resp.headers_mut();
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(text.len()));
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        resp.extensions_mut().insert(ResponseFlag::NoFlag);
        resp.extensions_mut()
            .insert(Text("Failed JWT authentication"));
        resp
    }

    /// The provider for a token in the `allow_missing` modes: the one naming its issuer,
    /// else one that names none.
    fn by_issuer(&self, iss: &str) -> Option<&Arc<Provider>> {
        self.providers
            .values()
            .find(|p| p.issuer == iss)
            .or_else(|| self.providers.values().find(|p| p.issuer.is_empty()))
    }

    /// Whether a token found at `loc` may carry `iss`: some provider reading that
    /// location names it, or names no issuer.
    fn issuer_allowed_at(&self, loc: &Location, iss: &str) -> bool {
        self.providers
            .values()
            .filter(|p| p.locations.contains(loc))
            .any(|p| p.issuer.is_empty() || p.issuer == iss)
    }
}

/// `jwt_authn_access_denied{<status, spaces as _>}`, made once per status.
fn details(s: Status) -> &'static str {
    static ALL: OnceLock<std::sync::Mutex<Vec<(Status, &'static str)>>> = OnceLock::new();
    let all = ALL.get_or_init(Default::default);
    let mut all = all.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, d)) = all.iter().find(|(x, _)| *x == s) {
        return d;
    }
    // One string per status, made once for the process: a bounded leak.
    let d: &'static str = Box::leak(
        format!(
            "jwt_authn_access_denied{{{}}}",
            s.text().replace(char::is_whitespace, "_")
        )
        .into_boxed_str(),
    );
    all.push((s, d));
    d
}

/// One request's verification.
struct Run<'a> {
    config: &'a JwtAuthnConfig,
    clusters: &'a ClusterMap,
    headers: &'a HeaderMap,
    path: &'a str,
    outputs: Outputs,
    metadata: Vec<(String, Value)>,
    /// The provider whose failure is reported (`failed_status_in_metadata`).
    failed_provider: Option<&'a Provider>,
    stats: &'a JwtAuthnStats,
    now: Duration,
}

impl<'a> Run<'a> {
    /// The providers a requirement involves.
    fn providers_of(&self, r: &Requirement, out: &mut Vec<&'a Arc<Provider>>) {
        match r {
            Requirement::Provider { name, .. } => {
                if let Some(p) = self.config.providers.get(name) {
                    out.push(p);
                }
            }
            Requirement::Any { children, .. } | Requirement::All(children) => {
                for c in children {
                    self.providers_of(c, out);
                }
            }
            Requirement::AllowMissing | Requirement::AllowMissingOrFailed => {
                out.extend(self.config.providers.values());
            }
            Requirement::None => {}
        }
    }

    /// Drops client copies of the headers the providers would set.
    fn sanitize(&mut self, r: &Requirement) {
        let mut ps = Vec::new();
        self.providers_of(r, &mut ps);
        for p in ps {
            if let Some(h) = &p.forward_payload_header {
                self.outputs.remove.push(h.clone());
            }
            for (h, _) in &p.claim_to_headers {
                self.outputs.remove.push(h.clone());
            }
        }
    }

    async fn verify(&mut self, r: &'a Requirement) -> Result<(), Status> {
        match r {
            Requirement::None => Ok(()),
            Requirement::Provider { name, audiences } => {
                let Some(p) = self.config.providers.get(name) else {
                    return Err(Status::UnknownIssuer);
                };
                if self.failed_provider.is_none() {
                    self.failed_provider = Some(p);
                }
                let tokens = self.extract(std::slice::from_ref(p));
                if tokens.is_empty() {
                    return Err(Status::Missing);
                }
                // Every token must pass; Envoy takes them last found first. Each looks
                // in Envoy's verified-token cache first, which pilotfish does not keep:
                // a miss, as Envoy counts one without `jwt_cache_config`.
                for t in tokens.iter().rev() {
                    self.stats.jwt_cache_miss.inc();
                    self.one(t, Some(p), audiences.as_deref()).await?;
                }
                Ok(())
            }
            Requirement::Any {
                children,
                allow_missing,
                allow_missing_or_failed,
            } => {
                let mut result = Status::Missing;
                for c in children {
                    match Box::pin(self.verify(c)).await {
                        Ok(()) => return Ok(()),
                        Err(s) if s.is_real_failure() || result == Status::Missing => result = s,
                        Err(_) => {}
                    }
                }
                if *allow_missing_or_failed || (*allow_missing && result == Status::Missing) {
                    Ok(())
                } else {
                    Err(result)
                }
            }
            Requirement::All(children) => {
                for c in children {
                    Box::pin(self.verify(c)).await?;
                }
                Ok(())
            }
            Requirement::AllowMissing | Requirement::AllowMissingOrFailed => {
                let all: Vec<Arc<Provider>> = self.config.providers.values().cloned().collect();
                let tokens = self.extract(&all);
                let mut last = Ok(());
                for t in tokens.iter().rev() {
                    last = self.one(t, None, None).await;
                }
                if matches!(r, Requirement::AllowMissingOrFailed) {
                    Ok(())
                } else {
                    last
                }
            }
        }
    }

    fn extract(&self, providers: &[Arc<Provider>]) -> Vec<Token> {
        let mut locations: Vec<&Location> = providers.iter().flat_map(|p| &p.locations).collect();
        locations.sort();
        locations.dedup();
        extract::tokens(&locations, self.headers, self.path, &self.outputs.remove)
    }

    /// One token, with its provider given (or found by issuer).
    async fn one(
        &mut self,
        t: &Token,
        provider: Option<&'a Arc<Provider>>,
        audiences: Option<&[String]>,
    ) -> Result<(), Status> {
        let jwt = Jwt::parse(&t.value)?;
        // A provider's own tokens must carry its issuer; in the `allow_missing` modes
        // (all providers' locations) some provider reading the token's location must.
        let p = match provider {
            Some(p) if p.issuer.is_empty() || p.issuer == jwt.iss => p,
            Some(_) => return Err(Status::UnknownIssuer),
            None if self.config.issuer_allowed_at(&t.location, &jwt.iss) => self
                .config
                .by_issuer(&jwt.iss)
                .ok_or(Status::UnknownIssuer)?,
            None => return Err(Status::UnknownIssuer),
        };
        self.failed_provider = Some(p);
        let now = self.now.as_secs();
        jwt.check_time(now, p.clock_skew)?;
        if !jwt.audience_allowed(audiences.unwrap_or(&p.audiences)) {
            return Err(Status::AudienceNotAllowed);
        }
        if p.subjects.as_ref().is_some_and(|m| !m.matches(&jwt.sub)) {
            return Err(Status::VerificationFail);
        }
        match p.max_lifetime {
            Some(max) => {
                let left = Duration::from_secs(jwt.exp).saturating_sub(self.now);
                if jwt.exp == 0 || left >= max {
                    return Err(Status::VerificationFail);
                }
            }
            None if p.require_expiration && jwt.exp == 0 => {
                return Err(Status::VerificationFail);
            }
            None => {}
        }
        let keys = match &p.keys {
            Keys::Local(k) => k.clone(),
            Keys::Remote(r) => r
                .get(self.clusters, &self.stats.fetch)
                .await
                .ok_or(Status::JwksFetchFail)?,
        };
        jwt.verify(&keys)?;
        self.good(&jwt, t, p);
        Ok(())
    }

    /// A verified token's outputs.
    fn good(&mut self, jwt: &Jwt, t: &Token, p: &Provider) {
        if let Some(h) = &p.forward_payload_header {
            let mut v = jwt.payload_b64.clone();
            if p.pad_forward_payload_header {
                while !v.len().is_multiple_of(4) {
                    v.push('=');
                }
            }
            if let Ok(v) = HeaderValue::from_str(&v) {
                self.outputs.add.push((h.clone(), v));
            }
        }
        for (h, claim) in &p.claim_to_headers {
            if let Some(v) = claim_value(&jwt.payload, claim)
                && let Ok(v) = HeaderValue::from_str(&v)
            {
                self.outputs.add.push((h.clone(), v));
            }
        }
        if !p.forward {
            match &t.location {
                Location::Header { name, .. } => self.outputs.remove.push(name.clone()),
                Location::Param(name) => self.outputs.remove_params.push(name.clone()),
                Location::Cookie(_) => {}
            }
        }
        if let Some(key) = &p.header_in_metadata {
            self.metadata
                .push((key.clone(), Value::Object(jwt.header.clone())));
        }
        if let Some(key) = &p.payload_in_metadata {
            let mut payload = jwt.payload.clone();
            for claim in &p.space_delimited_claims {
                if let Some(Value::String(s)) = payload.get(claim) {
                    let parts: Vec<Value> = s
                        .split(' ')
                        .filter(|x| !x.is_empty())
                        .map(Value::from)
                        .collect();
                    if !parts.is_empty() {
                        payload.insert(claim.clone(), Value::Array(parts));
                    }
                }
            }
            self.metadata.push((key.clone(), Value::Object(payload)));
        }
    }
}

/// A claim rendered for `claim_to_headers`: strings as they are, whole non-negative
/// numbers as integers, other numbers as C's `%f`, booleans, and objects or lists as
/// base64 of their JSON; none for null, a missing claim or an empty string.
fn claim_value(payload: &serde_json::Map<String, Value>, path: &[String]) -> Option<String> {
    let (first, rest) = path.split_first()?;
    let mut v = payload.get(first)?;
    for key in rest {
        v = v.as_object()?.get(key)?;
    }
    match v {
        Value::String(s) if s.is_empty() => None,
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => {
            let f = n.as_f64()?;
            if f >= 0.0 && f.fract() == 0.0 && f < 18_446_744_073_709_551_616.0 {
                Some(format!("{}", f as u64))
            } else {
                Some(format!("{f:.6}"))
            }
        }
        Value::Null => None,
        other => Some(data_encoding::BASE64.encode(other.to_string().as_bytes())),
    }
}

#[cfg(test)]
mod tests;
