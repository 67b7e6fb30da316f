//! `envoy.filters.http.ext_authz`: each request is authorized by an external service
//! before it is routed upstream — over gRPC (`envoy.service.auth.v3.Authorization/Check`
//! with a `CheckRequest`) or HTTP (the request's method and path, after `path_prefix`,
//! with its allowed headers). Istio's CUSTOM authorization action compiles to this,
//! gated by `filter_enabled_metadata` on the RBAC filter's shadow decision.
//!
//! The calls go through pilotfish's own clusters and pools (HTTP/2 for gRPC). Outcomes,
//! as Envoy has them: allowed (headers for the upstream request and the response),
//! denied (the service's status, default 403, headers and body; flag `UAEX`), or an
//! error (timeout, connect failure, gRPC failure, a 5xx from an HTTP service): then
//! `status_on_error` (default 403), or on through with `failure_mode_allow`.
use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, SystemTime},
};

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt;
use prost::Message;

use crate::{
    http::{
        body::{self, Body},
        dynamic_metadata::DynamicMetadata,
        local_reply::{self, ResponseFlag},
        matchers::StringMatcher,
    },
    telemetry::stats::{Counter, Store},
    upstream::manager::ClusterMap,
};

/// A compiled `ExtAuthz`.
#[derive(Debug, Clone)]
pub struct ExtAuthzConfig {
    pub service: Service,
    pub failure_mode_allow: bool,
    /// `failure_mode_allow_header_add`: `x-envoy-auth-failure-mode-allowed: true`.
    pub failure_mode_allow_header_add: bool,
    pub with_request_body: Option<BufferSettings>,
    /// `status_on_error` (default 403).
    pub status_on_error: StatusCode,
    /// `stat_prefix`: stats under `http.<hcm>.ext_authz.<stat_prefix>.`.
    pub stat_prefix: String,
    /// `allowed_headers`: the request headers the service sees (all of them when
    /// unset for gRPC; for HTTP, Envoy's always-sent few plus these).
    pub allowed_headers: Option<Vec<StringMatcher>>,
    /// `disallowed_headers`: never sent, even when allowed.
    pub disallowed_headers: Vec<StringMatcher>,
    /// `filter_enabled_metadata`: the filter acts only on requests whose dynamic
    /// metadata matches (Istio's CUSTOM action: the RBAC shadow policy that matched).
    pub enabled_metadata: Option<crate::http::metadata_matcher::MetadataMatcher>,
}

#[derive(Debug, Clone)]
pub enum Service {
    Grpc {
        cluster: String,
        /// `grpc_service.envoy_grpc.authority` (default: the cluster name).
        authority: String,
        /// `grpc_service.timeout` (default 200ms).
        timeout: Duration,
        initial_metadata: Vec<(HeaderName, HeaderValue)>,
    },
    Http {
        /// `server_uri.cluster`.
        cluster: String,
        /// `server_uri.timeout`.
        timeout: Duration,
        path_prefix: String,
        /// `authorization_request.headers_to_add`.
        headers_to_add: Vec<(HeaderName, HeaderValue)>,
        /// `authorization_response`: which of the service's headers go where.
        allowed_upstream_headers: Vec<StringMatcher>,
        allowed_upstream_headers_to_append: Vec<StringMatcher>,
        /// On a denial; empty: all but a few.
        allowed_client_headers: Vec<StringMatcher>,
        allowed_client_headers_on_success: Vec<StringMatcher>,
    },
}

#[derive(Debug, Clone, Copy)]
pub struct BufferSettings {
    pub max_request_bytes: usize,
    pub allow_partial_message: bool,
    pub pack_as_bytes: bool,
}

/// `ExtAuthzPerRoute`: off for a route, or context extensions to send.
#[derive(Debug, Clone)]
pub enum PerRoute {
    Disabled,
    Check {
        context_extensions: HashMap<String, String>,
        disable_request_body_buffering: bool,
    },
}

#[derive(Debug)]
pub struct ExtAuthzStats {
    ok: Counter,
    denied: Counter,
    error: Counter,
    failure_mode_allowed: Counter,
    disabled: Counter,
    store: Arc<Store>,
}

impl ExtAuthzStats {
    pub fn new(store: &Arc<Store>, hcm_prefix: &str, cfg: &ExtAuthzConfig) -> Self {
        let scope = format!("http.{hcm_prefix}.ext_authz.{}", stat_infix(cfg));
        let c = |n: &str| store.counter_tagged_by_default(format!("{scope}{n}"));
        let stats = ExtAuthzStats {
            ok: c("ok"),
            denied: c("denied"),
            error: c("error"),
            failure_mode_allowed: c("failure_mode_allowed"),
            disabled: c("disabled"),
            store: store.clone(),
        };
        // Envoy's other counters, for conditions pilotfish never reaches (no filter
        // state, no dynamic metadata from the service, no header limits, no shadow
        // mode): present, and zero, as Envoy shows them.
        for name in [
            "filter_state_name_collision",
            "ignored_dynamic_metadata",
            "invalid",
            "omitted_response_headers",
            "request_header_limits_reached",
            "response_header_limits_reached",
            "shadow_denied",
            "shadow_error",
        ] {
            c(name);
        }
        stats
    }

    /// Envoy counts each outcome twice: in the connection manager's scope and in the
    /// route's target cluster's (`cluster.<name>.ext_authz.<outcome>`). The cluster's
    /// counter is looked up by name per check: cheap next to the call to the service
    /// that every check makes, and it spares holding counters for every route target.
    fn count(&self, which: &Counter, name: &str, cfg: &ExtAuthzConfig, cluster: Option<&str>) {
        which.inc();
        if let Some(c) = cluster {
            self.store
                .counter_tagged_by_default(format!(
                    "cluster.{c}.ext_authz.{}{name}",
                    stat_infix(cfg)
                ))
                .inc();
        }
    }
}

/// `<stat_prefix>.` or nothing.
fn stat_infix(cfg: &ExtAuthzConfig) -> String {
    if cfg.stat_prefix.is_empty() {
        String::new()
    } else {
        format!("{}.", cfg.stat_prefix)
    }
}

/// What the request looks like to the authorization service.
pub struct Attributes<'a> {
    pub peer: SocketAddr,
    pub local: SocketAddr,
    pub protocol: &'static str,
    /// The route's target cluster's stat name (for the cluster-scoped counters).
    pub cluster: Option<&'a str>,
}

/// The filter's verdict.
pub enum Verdict {
    /// Go on; change the upstream request and add to the response as the service said.
    Allow(Allowed),
    /// Answer with this.
    Reply(Response<Body>),
}

/// What an allowed request carries on.
#[derive(Default)]
pub struct Allowed {
    pub upstream_set: Vec<(HeaderName, HeaderValue)>,
    pub upstream_append: Vec<(HeaderName, HeaderValue)>,
    pub upstream_remove: Vec<HeaderName>,
    pub response: Vec<(HeaderName, HeaderValue)>,
}

impl Allowed {
    /// Applies the upstream request's changes.
    pub fn apply(&self, h: &mut HeaderMap) {
        for (k, v) in &self.upstream_set {
            h.insert(k.clone(), v.clone());
        }
        // Appending joins the values with `,` into one header, as Envoy's header map.
        for (k, v) in &self.upstream_append {
            let joined = h.get(k).map(|old| {
                let mut b = old.as_bytes().to_vec();
                b.push(b',');
                b.extend_from_slice(v.as_bytes());
                b
            });
            match joined.and_then(|b| HeaderValue::from_bytes(&b).ok()) {
                Some(j) => h.insert(k.clone(), j),
                None => h.insert(k.clone(), v.clone()),
            };
        }
        for k in &self.upstream_remove {
            // Envoy refuses to remove pseudo-headers and `host`.
            if k != http::header::HOST {
                h.remove(k);
            }
        }
    }
}

enum Outcome {
    Ok(Allowed),
    Denied {
        status: StatusCode,
        headers: Vec<(HeaderName, HeaderValue, bool)>,
        body: Bytes,
    },
    Error,
}

impl ExtAuthzConfig {
    /// Authorizes `req`, whose body is `body` (buffered, and put back whole, when
    /// `with_request_body` asks for it).
    #[allow(clippy::too_many_arguments)]
    pub async fn check(
        &self,
        clusters: &ClusterMap,
        req: &Request<Body>,
        body: &mut Body,
        attrs: &Attributes<'_>,
        per_route: Option<&PerRoute>,
        metadata: &DynamicMetadata,
        stats: &ExtAuthzStats,
    ) -> Verdict {
        if self
            .enabled_metadata
            .as_ref()
            .is_some_and(|g| !g.matches(Some(metadata)))
        {
            // Counted in the connection manager's scope only.
            stats.disabled.inc();
            return Verdict::Allow(Allowed::default());
        }
        let (context, no_body) = match per_route {
            Some(PerRoute::Disabled) => return Verdict::Allow(Allowed::default()),
            Some(PerRoute::Check {
                context_extensions,
                disable_request_body_buffering,
            }) => (Some(context_extensions), *disable_request_body_buffering),
            None => (None, false),
        };
        // A request without a body is not buffered (nor marked partial or not).
        let bodiless = http_body::Body::is_end_stream(body);
        let seen = match self.with_request_body.filter(|_| !no_body && !bodiless) {
            Some(b) => match buffer_body(body, b).await {
                Ok(seen) => Some(seen),
                Err(resp) => return Verdict::Reply(resp),
            },
            None => None,
        };
        let outcome = match &self.service {
            Service::Grpc { .. } => self.grpc(clusters, req, attrs, context, seen).await,
            Service::Http { .. } => self.http(clusters, req, seen).await,
        };
        match outcome {
            Outcome::Ok(allowed) => {
                stats.count(&stats.ok, "ok", self, attrs.cluster);
                Verdict::Allow(allowed)
            }
            Outcome::Denied {
                status,
                headers,
                body,
            } => {
                stats.count(&stats.denied, "denied", self, attrs.cluster);
                let mut resp =
                    local_reply::with_body(status, "", ResponseFlag::UnauthorizedExternalService);
                if !body.is_empty() {
                    resp.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        HeaderValue::from_static("text/plain"),
                    );
                }
                for (k, v, append) in headers {
                    if append {
                        resp.headers_mut().append(k, v);
                    } else {
                        resp.headers_mut().insert(k, v);
                    }
                }
                if !body.is_empty() {
                    resp.headers_mut()
                        .insert(http::header::CONTENT_LENGTH, HeaderValue::from(body.len()));
                    *resp.body_mut() = body::full(body);
                }
                Verdict::Reply(resp)
            }
            Outcome::Error => {
                stats.count(&stats.error, "error", self, attrs.cluster);
                if self.failure_mode_allow {
                    stats.count(
                        &stats.failure_mode_allowed,
                        "failure_mode_allowed",
                        self,
                        attrs.cluster,
                    );
                    let mut allowed = Allowed::default();
                    if self.failure_mode_allow_header_add {
                        allowed.upstream_set.push((
                            HeaderName::from_static("x-envoy-auth-failure-mode-allowed"),
                            HeaderValue::from_static("true"),
                        ));
                    }
                    return Verdict::Allow(allowed);
                }
                Verdict::Reply(local_reply::with_body(
                    self.status_on_error,
                    "",
                    ResponseFlag::UnauthorizedExternalService,
                ))
            }
        }
    }

    /// The request's headers as the service sees them (pseudo-headers first), after
    /// `allowed_headers` / `disallowed_headers`. For an HTTP service, `:authority`,
    /// `:method`, `:path`, `content-length` and `authorization` are always allowed.
    fn check_headers(&self, req: &Request<Body>, partial: Option<bool>) -> Vec<(String, String)> {
        let http_service = matches!(self.service, Service::Http { .. });
        let allowed = |name: &str| {
            let always = http_service
                && matches!(
                    name,
                    ":authority" | ":method" | ":path" | "content-length" | "authorization"
                );
            (always
                || self
                    .allowed_headers
                    .as_ref()
                    .is_none_or(|m| m.iter().any(|m| m.matches(name))))
                && !self.disallowed_headers.iter().any(|m| m.matches(name))
        };
        let mut out: Vec<(String, String)> = Vec::new();
        let pseudo = [
            (":authority", request_authority(req)),
            (":path", path_of(req).to_owned()),
            (":method", req.method().to_string()),
            (":scheme", "http".to_owned()),
        ];
        for (k, v) in pseudo {
            if allowed(k) {
                out.push((k.to_owned(), v));
            }
        }
        for (k, v) in req.headers() {
            if k == http::header::HOST || !allowed(k.as_str()) {
                continue;
            }
            let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
            // Repeated headers travel as one, comma-joined (as in Envoy's map).
            match out.iter_mut().find(|(n, _)| n == k.as_str()) {
                Some((_, e)) => {
                    e.push(',');
                    e.push_str(&v);
                }
                None => out.push((k.as_str().to_owned(), v)),
            }
        }
        // A buffered body says whether it was cut.
        if let Some(p) = partial {
            let name = "x-envoy-auth-partial-body";
            if allowed(name) {
                out.push((name.to_owned(), p.to_string()));
            }
        }
        out
    }

    #[allow(
        clippy::expect_used,
        reason = "encoding into a growing buffer cannot fail"
    )]
    async fn grpc(
        &self,
        clusters: &ClusterMap,
        req: &Request<Body>,
        attrs: &Attributes<'_>,
        context: Option<&HashMap<String, String>>,
        body: Option<Buffered>,
    ) -> Outcome {
        use envoy_types::pb::envoy::service::auth::v3::{
            CheckRequest, CheckResponse, check_response::HttpResponse,
        };
        let Service::Grpc {
            cluster,
            authority,
            timeout,
            initial_metadata,
        } = &self.service
        else {
            return Outcome::Error;
        };
        let check = CheckRequest {
            attributes: Some(self.attribute_context(req, attrs, context, body)),
        };
        let mut frame = BytesMut::with_capacity(check.encoded_len() + 5);
        frame.put_u8(0);
        frame.put_u32(check.encoded_len() as u32);
        check.encode(&mut frame).expect("a BytesMut grows");
        let mut call = Request::post(format!(
            "http://{authority}/envoy.service.auth.v3.Authorization/Check"
        ))
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header(http::header::TE, "trailers")
        .header("grpc-timeout", format!("{}m", timeout.as_millis()));
        for (k, v) in initial_metadata {
            call = call.header(k, v);
        }
        let Ok(call) = call.body(body::full(frame.freeze())) else {
            return Outcome::Error;
        };
        let Some((_, bytes, trailers)) = send(clusters, cluster, call, true, *timeout).await else {
            return Outcome::Error;
        };
        let status = trailers
            .as_ref()
            .and_then(|t| t.get("grpc-status"))
            .and_then(|v| v.to_str().ok()?.parse::<i32>().ok());
        if status != Some(0) || bytes.len() < 5 {
            return Outcome::Error;
        }
        let Ok(resp) = CheckResponse::decode(&bytes[5..]) else {
            return Outcome::Error;
        };
        let code = resp.status.as_ref().map_or(0, |s| s.code);
        if code == 0 {
            let mut allowed = Allowed::default();
            if let Some(HttpResponse::OkResponse(ok)) = &resp.http_response {
                for h in &ok.headers {
                    let Some((k, v)) = header_of(h.header.as_ref()) else {
                        continue;
                    };
                    #[allow(deprecated)]
                    let appends = h.append.as_ref().is_some_and(|b| b.value);
                    if appends {
                        allowed.upstream_append.push((k, v));
                    } else {
                        allowed.upstream_set.push((k, v));
                    }
                }
                allowed.upstream_remove = ok
                    .headers_to_remove
                    .iter()
                    .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
                    .collect();
                allowed.response = ok
                    .response_headers_to_add
                    .iter()
                    .filter_map(|h| header_of(h.header.as_ref()))
                    .collect();
            }
            return Outcome::Ok(allowed);
        }
        let (status, headers, body) = match &resp.http_response {
            Some(HttpResponse::DeniedResponse(d)) => (
                d.status
                    .as_ref()
                    .and_then(|s| StatusCode::from_u16(s.code as u16).ok())
                    .filter(|s| s.as_u16() != 0)
                    .unwrap_or(StatusCode::FORBIDDEN),
                d.headers
                    .iter()
                    .filter_map(|h| {
                        #[allow(deprecated)]
                        let appends = h.append.as_ref().is_some_and(|b| b.value);
                        header_of(h.header.as_ref()).map(|(k, v)| (k, v, appends))
                    })
                    .collect(),
                Bytes::from(d.body.clone()),
            ),
            _ => (StatusCode::FORBIDDEN, Vec::new(), Bytes::new()),
        };
        Outcome::Denied {
            status,
            headers,
            body,
        }
    }

    fn attribute_context(
        &self,
        req: &Request<Body>,
        attrs: &Attributes<'_>,
        context: Option<&HashMap<String, String>>,
        body: Option<Buffered>,
    ) -> envoy_types::pb::envoy::service::auth::v3::AttributeContext {
        use envoy_types::pb::envoy::{
            config::core::v3::{Address, SocketAddress, address, socket_address},
            service::auth::v3::{AttributeContext, attribute_context},
        };
        let addr = |a: SocketAddr| Address {
            address: Some(address::Address::SocketAddress(SocketAddress {
                address: a.ip().to_string(),
                port_specifier: Some(socket_address::PortSpecifier::PortValue(a.port().into())),
                ..Default::default()
            })),
        };
        let headers: HashMap<String, String> = self
            .check_headers(req, body.as_ref().map(|b| b.partial))
            .into_iter()
            .collect();
        let authority = request_authority(req);
        let path = path_of(req).to_owned();
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        let mut http = attribute_context::HttpRequest {
            id: req
                .headers()
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned(),
            method: req.method().to_string(),
            headers,
            path,
            host: authority,
            scheme: "http".into(),
            // Envoy 1.40 leaves `query` empty (the query stays in `path`), and `size`
            // is what the filter buffered (0 without `with_request_body`).
            protocol: attrs.protocol.into(),
            size: body.as_ref().map_or(0, |b| b.size as i64),
            ..Default::default()
        };
        if let Some(b) = body {
            match self.with_request_body {
                Some(BufferSettings {
                    pack_as_bytes: true,
                    ..
                }) => http.raw_body = b.bytes.to_vec(),
                _ => http.body = String::from_utf8_lossy(&b.bytes).into_owned(),
            }
        }
        AttributeContext {
            source: Some(attribute_context::Peer {
                address: Some(addr(attrs.peer)),
                ..Default::default()
            }),
            destination: Some(attribute_context::Peer {
                address: Some(addr(attrs.local)),
                ..Default::default()
            }),
            request: Some(attribute_context::Request {
                time: Some(envoy_types::pb::google::protobuf::Timestamp {
                    seconds: now.as_secs() as i64,
                    nanos: now.subsec_nanos() as i32,
                }),
                http: Some(http),
            }),
            context_extensions: context.cloned().unwrap_or_default(),
            ..Default::default()
        }
    }

    #[allow(clippy::expect_used, reason = "a builder without an error has headers")]
    async fn http(
        &self,
        clusters: &ClusterMap,
        req: &Request<Body>,
        body: Option<Buffered>,
    ) -> Outcome {
        let Service::Http {
            cluster,
            timeout,
            path_prefix,
            headers_to_add,
            allowed_upstream_headers,
            allowed_upstream_headers_to_append,
            allowed_client_headers,
            allowed_client_headers_on_success,
        } = &self.service
        else {
            return Outcome::Error;
        };
        let mut call = Request::builder().method(req.method().clone());
        let h = call.headers_mut().expect("a fresh builder");
        let mut path = String::from("/");
        for (k, v) in self.check_headers(req, body.as_ref().map(|b| b.partial)) {
            match k.as_str() {
                ":path" => path = format!("{path_prefix}{v}"),
                ":authority" => {
                    if let Ok(v) = HeaderValue::from_str(&v) {
                        h.insert(http::header::HOST, v);
                    }
                }
                // The method is the request's; the body is the buffered one, if any.
                ":method" | ":scheme" | "content-length" => {}
                _ => {
                    if let (Ok(k), Ok(v)) = (
                        HeaderName::from_bytes(k.as_bytes()),
                        HeaderValue::from_str(&v),
                    ) {
                        h.append(k, v);
                    }
                }
            }
        }
        for (k, v) in headers_to_add {
            h.insert(k.clone(), v.clone());
        }
        // What Envoy's own HTTP client adds to the call.
        h.insert(
            "x-envoy-expected-rq-timeout-ms",
            HeaderValue::from(timeout.as_millis() as u64),
        );
        h.insert("x-envoy-internal", HeaderValue::from_static("true"));
        let payload = body.map(|b| b.bytes).unwrap_or_default();
        h.insert(
            http::header::CONTENT_LENGTH,
            HeaderValue::from(payload.len()),
        );
        let Ok(call) = call.uri(path).body(body::full(payload)) else {
            return Outcome::Error;
        };
        let Some((head, bytes, _)) = send(clusters, cluster, call, false, *timeout).await else {
            return Outcome::Error;
        };
        let pick = |list: &[StringMatcher]| -> Vec<(HeaderName, HeaderValue)> {
            head.headers
                .iter()
                .filter(|(k, _)| list.iter().any(|m| m.matches(k.as_str())))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        };
        if head.status == StatusCode::OK {
            return Outcome::Ok(Allowed {
                upstream_set: pick(allowed_upstream_headers),
                upstream_append: pick(allowed_upstream_headers_to_append),
                upstream_remove: Vec::new(),
                response: pick(allowed_client_headers_on_success),
            });
        }
        if head.status.is_server_error() {
            return Outcome::Error;
        }
        // Denied: the service's status and body go to the client, with its headers
        // (all but the framing ones, or those `allowed_client_headers` names plus the
        // few Envoy always adds).
        let headers = head
            .headers
            .iter()
            .filter(|(k, _)| {
                let name = k.as_str();
                if allowed_client_headers.is_empty() {
                    !matches!(
                        name,
                        "content-length" | "transfer-encoding" | "connection" | "host"
                    )
                } else {
                    matches!(name, "www-authenticate" | "location")
                        || allowed_client_headers.iter().any(|m| m.matches(name))
                }
            })
            .map(|(k, v)| (k.clone(), v.clone(), false))
            .collect();
        Outcome::Denied {
            status: head.status,
            headers,
            body: bytes,
        }
    }
}

fn request_authority(req: &Request<Body>) -> String {
    req.uri()
        .authority()
        .map(|a| a.to_string())
        .or_else(|| {
            req.headers()
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
        })
        .unwrap_or_default()
}

fn path_of(req: &Request<Body>) -> &str {
    req.uri().path_and_query().map_or("/", |p| p.as_str())
}

/// One call to the authorization service: its response head, body and trailers, or
/// `None` on any failure (no such cluster, no host, connect failure, reset, timeout).
async fn send(
    clusters: &ClusterMap,
    cluster: &str,
    req: Request<Body>,
    h2: bool,
    timeout: Duration,
) -> Option<(http::response::Parts, Bytes, Option<HeaderMap>)> {
    crate::upstream::side_call::call(clusters, cluster, req, h2, timeout)
        .await
        .ok()
}

fn header_of(
    h: Option<&envoy_types::pb::envoy::config::core::v3::HeaderValue>,
) -> Option<(HeaderName, HeaderValue)> {
    let h = h?;
    let value = if h.raw_value.is_empty() {
        h.value.as_bytes()
    } else {
        &h.raw_value
    };
    Some((
        HeaderName::from_bytes(h.key.to_ascii_lowercase().as_bytes()).ok()?,
        HeaderValue::from_bytes(value).ok()?,
    ))
}

/// The request body as far as `with_request_body` read it.
pub struct Buffered {
    /// What the service is sent (at most `max_request_bytes`).
    bytes: Bytes,
    /// How much was read (Envoy's `size`: it counts whole chunks).
    size: usize,
    /// Cut at `max_request_bytes` (`x-envoy-auth-partial-body`).
    partial: bool,
}

/// `with_request_body`: the body read up to the limit and put back, whole, for the
/// upstream. A longer one is refused 413 unless `allow_partial_message` (then its first
/// bytes go to the service).
#[allow(clippy::result_large_err)]
async fn buffer_body(slot: &mut Body, b: BufferSettings) -> Result<Buffered, Response<Body>> {
    let mut body = std::mem::replace(slot, body::empty());
    let mut read: Vec<Bytes> = Vec::new();
    let mut size = 0;
    let mut trailers = None;
    let mut partial = false;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            return Err(local_reply::reply(ResponseFlag::UpstreamRemoteReset));
        };
        let data = match frame.into_data() {
            Ok(d) => d,
            Err(f) => {
                trailers = f.into_trailers().ok();
                break;
            }
        };
        size += data.len();
        read.push(data);
        if size > b.max_request_bytes {
            if !b.allow_partial_message {
                let mut r = local_reply::with_body(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "Payload Too Large",
                    ResponseFlag::UpstreamRemoteReset,
                );
                // Envoy's buffer-limit reply carries no response flag.
                r.extensions_mut().remove::<ResponseFlag>();
                return Err(r);
            }
            partial = true;
            break;
        }
    }
    let mut seen = BytesMut::with_capacity(size.min(b.max_request_bytes));
    for d in &read {
        let room = b.max_request_bytes - seen.len();
        seen.extend_from_slice(&d[..d.len().min(room)]);
    }
    let rest = partial.then_some(body);
    let frames = read
        .into_iter()
        .map(|d| Ok::<_, body::BoxError>(http_body::Frame::data(d)))
        .chain(trailers.map(|t| Ok(http_body::Frame::trailers(t))));
    let head = futures_util::stream::iter(frames.collect::<Vec<_>>());
    *slot = match rest {
        None => body::boxed(http_body_util::StreamBody::new(head)),
        Some(rest) => {
            let tail = futures_util::stream::unfold(rest, |mut b| async move {
                b.frame().await.map(|f| (f, b))
            });
            body::boxed(http_body_util::StreamBody::new(
                futures_util::StreamExt::chain(head, tail),
            ))
        }
    };
    Ok(Buffered {
        bytes: seen.freeze(),
        size,
        partial,
    })
}
