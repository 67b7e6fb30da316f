//! The HTTP connection manager's request path: route, pick a host, forward, and turn
//! failures into Envoy's local replies.
use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Instant, SystemTime},
};

use http::{
    HeaderValue, Request, Response, Uri, Version,
    header::{self, HOST},
    uri::{Authority, PathAndQuery, Scheme},
};
use hyper::body::Incoming;

use super::{
    body::{self, Body, Guarded, Observer},
    dynamic_metadata::{self, DynamicMetadata},
    filters::{
        compressor,
        cors::{self, CorsStats},
        ext_authz::{self, ExtAuthzConfig, ExtAuthzStats},
        fault::{FaultConfig, FaultStats},
        grpc_stats, jwt_authn,
    },
    hash_policy, header_mutation, headers,
    idle::Activity,
    local_reply::{self, ResponseFlag, RetryFlags},
    matchers::RequestHead,
    mirror, path_normalize, redirect, request_checks,
    retry::{Decision, Failure, Replay, RetryState},
    rewrite,
    route_match::{Matched, Routes, Target},
    route_slot::{RouteSlots, RoutesHandle},
    upgrade,
};
use crate::{
    config::{FilterOverride, HttpConfig, HttpFilter, UpstreamProtocol},
    telemetry::{
        access_log::{AccessLog, Record, Sinks},
        scopes::{ClusterStats, HttpStats, VclusterStats},
        stats::{GaugeGuard, Store},
        tracing::{
            HttpTracing, RequestSpan, Tracers,
            request_span::{GrpcEnd, Outcome as SpanOutcome, RequestFacts},
        },
    },
    upstream::{
        Cluster, ClusterManager, Host,
        connect::ConnectError,
        http_pool::{self, PooledBody, SendError},
        manager::ClusterMap,
        outlier::Outcome as HostResult,
    },
};

/// One HTTP connection manager, compiled: its routes (inline, or the RDS slot they
/// arrive in), the cluster set requests are sent to, and stats.
#[derive(Debug)]
pub struct HttpConnectionManager {
    pub config: HttpConfig,
    pub routes: RoutesHandle,
    clusters: Arc<ClusterManager>,
    pub stats: HttpStats,
    server_name: HeaderValue,
    access_logs: Arc<[AccessLog]>,
    /// The HTTP filters before the router, in chain order, with their stats.
    filters: Vec<Filter>,
    /// The compressor filters, in chain order (they act on the response).
    compressors: Vec<compressor::Compressor>,
    /// `envoy.filters.http.grpc_stats`, counting gRPC calls.
    grpc_stats: Option<grpc_stats::GrpcStats>,
    /// `istio.alpn`: the ALPN TLS upstreams offer, by upstream protocol.
    istio_alpn: Option<crate::istio::alpn::AlpnConfig>,
    /// Istio's HTTP peer metadata exchange.
    peer_metadata: Option<crate::istio::peer_metadata::PeerMetadataConfig>,
    /// `istio.stats`: Istio's standard metrics.
    istio_stats: Option<crate::istio::stats::IstioStats>,
    /// `tracing`: the sampling decision and the request's span.
    tracing: Option<HttpTracing>,
}

/// An HTTP filter (by its name in `http_filters`, which per-route configs use).
#[derive(Debug)]
enum Filter {
    Cors {
        name: String,
        stats: CorsStats,
    },
    Fault {
        name: String,
        config: FaultConfig,
        stats: FaultStats,
    },
    Rbac {
        name: String,
        config: Arc<crate::rbac::RbacConfig>,
        stats: crate::rbac::RbacStats,
    },
    ExtAuthz {
        name: String,
        config: Arc<ExtAuthzConfig>,
        stats: ExtAuthzStats,
    },
    JwtAuthn {
        name: String,
        config: Arc<jwt_authn::JwtAuthnConfig>,
        stats: jwt_authn::JwtAuthnStats,
    },
}

/// What routing chose for a request, for the access log.
#[derive(Default)]
struct Picked<'a> {
    matched: Option<Matched<'a>>,
    host: Option<SocketAddr>,
    /// The fault filter delayed the request (`DI`).
    delayed: bool,
    /// The CORS headers the response gets, if the CORS filter allowed the request.
    cors: Option<cors::ResponseHeaders<'a>>,
    /// A gRPC call the grpc_stats filter counts.
    grpc_call: Option<Arc<grpc_stats::Call>>,
    /// Headers the ext_authz service asked to add to the response.
    authz_response: Vec<(http::HeaderName, HeaderValue)>,
    /// Attempts sent upstream (`x-envoy-attempt-count`).
    attempts: u32,
    /// The request is internal (`internal_address_config`): Envoy's control headers
    /// (`x-envoy-retry-on`, `x-envoy-upstream-rq-timeout-ms`, …) apply.
    internal: bool,
    /// The Istio peer metadata headers the request carried (they came off it).
    peer_headers: crate::istio::peer_metadata::Seen,
    /// Istio's stats are on: note the picked endpoint's `workload`.
    wants_workload: bool,
    /// The picked endpoint's workload from its `istio.workload` metadata (Istio's stats
    /// fall back to it when the upstream sends no peer metadata).
    workload: Option<Arc<crate::istio::peer::Peer>>,
    /// What the filters left for the ones after them (and for span tags).
    metadata: DynamicMetadata,
    /// The request's span, when the connection manager traces.
    span: Option<RequestSpan>,
}

impl Picked<'_> {
    /// Notes the endpoint an attempt goes to.
    fn picked(&mut self, host: &crate::upstream::host::Host) {
        self.host = Some(host.addr);
        if self.wants_workload {
            self.workload = host.attrs().istio_workload.clone();
        }
    }
}

/// What the listener knows about the downstream connection.
#[derive(Debug, Clone, Copy)]
pub struct Downstream {
    pub peer: SocketAddr,
    /// Original destination (after `original_dst`), used by ORIGINAL_DST clusters.
    pub local: SocketAddr,
}

impl HttpConnectionManager {
    /// The connection manager of a listener whose `traffic_direction` is INBOUND
    /// (`inbound`) or not (which side Istio's stats report as).
    pub fn new(
        config: HttpConfig,
        clusters: &Arc<ClusterManager>,
        slots: &RouteSlots,
        store: &Arc<Store>,
        sinks: &Sinks,
        tracers: &Tracers,
        inbound: bool,
    ) -> Result<Self, String> {
        let routes = RoutesHandle::new(&config.routes, slots, &config.stat_prefix, store)?;
        let access_logs = config
            .access_logs
            .iter()
            .map(|l| sinks.open(l))
            .collect::<Result<_, _>>()?;
        let stats = HttpStats::new(store, &config.stat_prefix);
        let filters = config
            .filters
            .iter()
            .filter_map(|f| match f {
                HttpFilter::Fault { name, config: c } => Some(Filter::Fault {
                    name: name.clone(),
                    config: c.clone(),
                    stats: FaultStats::new(store, &config.stat_prefix),
                }),
                HttpFilter::Cors { name } => Some(Filter::Cors {
                    name: name.clone(),
                    stats: CorsStats::new(store, &config.stat_prefix),
                }),
                HttpFilter::Rbac { name, config: c } => Some(Filter::Rbac {
                    name: name.clone(),
                    stats: crate::rbac::RbacStats::new(
                        store,
                        &format!("http.{}.", config.stat_prefix),
                        c,
                    ),
                    config: c.clone(),
                }),
                HttpFilter::JwtAuthn { name, config: c } => {
                    let stats = jwt_authn::JwtAuthnStats::new(store, &config.stat_prefix, c);
                    c.start(clusters, &stats);
                    Some(Filter::JwtAuthn {
                        name: name.clone(),
                        config: c.clone(),
                        stats,
                    })
                }
                HttpFilter::ExtAuthz { name, config: c } => Some(Filter::ExtAuthz {
                    name: name.clone(),
                    stats: ExtAuthzStats::new(store, &config.stat_prefix, c),
                    config: c.clone(),
                }),
                HttpFilter::Compressor { .. }
                | HttpFilter::GrpcStats { .. }
                | HttpFilter::IstioAlpn { .. }
                | HttpFilter::IstioStats { .. }
                | HttpFilter::IstioPeerMetadata { .. } => None,
            })
            .collect();
        let grpc_stats = config.filters.iter().find_map(|f| match f {
            HttpFilter::GrpcStats { config: c, .. } => {
                Some(grpc_stats::GrpcStats::new(c.clone(), store))
            }
            _ => None,
        });
        let istio_alpn = config.filters.iter().find_map(|f| match f {
            HttpFilter::IstioAlpn { config: c, .. } => Some(c.clone()),
            _ => None,
        });
        let peer_metadata = config.filters.iter().find_map(|f| match f {
            HttpFilter::IstioPeerMetadata { config: c, .. } => Some(c.clone()),
            _ => None,
        });
        let istio_stats = config.filters.iter().find_map(|f| match f {
            HttpFilter::IstioStats { config: c, .. } => {
                Some(crate::istio::stats::IstioStats::new(c, inbound, store))
            }
            _ => None,
        });
        let compressors = config
            .filters
            .iter()
            .filter_map(|f| match f {
                HttpFilter::Compressor { config: c, .. } => Some(compressor::Compressor::new(
                    c.clone(),
                    store,
                    &config.stat_prefix,
                )),
                _ => None,
            })
            .collect();
        let tracing = config
            .tracing
            .clone()
            .map(|t| HttpTracing::new(t, tracers, &config.stat_prefix, inbound, store));
        let server_name = HeaderValue::from_str(&config.server_name).map_err(|_| {
            format!(
                "server_name '{}' is not a valid header value",
                config.server_name
            )
        })?;
        Ok(HttpConnectionManager {
            config,
            routes,
            clusters: clusters.clone(),
            stats,
            server_name,
            access_logs,
            filters,
            compressors,
            grpc_stats,
            istio_alpn,
            peer_metadata,
            istio_stats,
            tracing,
        })
    }

    /// Serves one request. Never fails: every error becomes a local reply.
    pub async fn handle(
        self: Arc<Self>,
        down: Downstream,
        req: Request<Incoming>,
    ) -> Response<Body> {
        let started = Instant::now();
        let stats = &self.stats;
        stats.downstream_rq_total.inc();
        if req.version() == Version::HTTP_2 {
            stats.downstream_rq_http2_total.inc();
        } else {
            stats.downstream_rq_http1_total.inc();
        }
        let active = GaugeGuard::new(&stats.downstream_rq_active);
        // The routes and clusters this request sees, whatever xDS changes meanwhile.
        let routes = self.routes.current();
        let clusters = self.clusters.snapshot();
        let view = (routes.as_deref(), &*clusters);
        let grpc = headers::is_grpc(req.headers());
        let mut req = req;
        // Istio's peer metadata filter comes first in istiod's chains.
        let peer_headers = self
            .peer_metadata
            .as_ref()
            .map(|p| p.on_request(req.headers_mut()))
            .unwrap_or_default();
        if (self.config.normalize_path || self.config.merge_slashes)
            && let Err(mut resp) = self.normalize(&mut req)
        {
            let picked = Picked {
                peer_headers,
                ..Default::default()
            };
            self.finish(&picked, down, grpc, &mut resp);
            return RequestTimer {
                _active: active,
                started,
                hcm: self,
            }
            .rides_on(resp);
        }
        // What the compressors need of the request, before anything forwards it.
        let compress = (!self.compressors.is_empty()).then(|| {
            let accept = req.headers().get(header::ACCEPT_ENCODING).cloned();
            for c in &self.compressors {
                c.on_request(req.headers_mut());
            }
            (accept, req.method() == http::Method::HEAD)
        });
        // The client as the connection manager sees it (RBAC's `remote_ip`), read
        // before its own headers change `x-forwarded-for`.
        let remote = self
            .config
            .forwarded
            .remote_address(req.headers(), down.peer);
        // The connection manager's own request headers, before routing (as Envoy).
        let internal = self.config.forwarded.is_internal(req.headers(), down.peer);
        let tls = req.extensions().get::<Arc<crate::tls::PeerInfo>>().cloned();
        let h = req.headers_mut();
        self.config
            .forwarded
            .apply(h, down.peer, internal, tls.is_some());
        self.config.client_cert.apply(h, tls.as_deref());
        if self.config.generate_request_id && !h.contains_key(headers::X_REQUEST_ID) {
            h.insert(headers::X_REQUEST_ID, headers::request_id());
        }
        let (trace_reason, span) = self.tracing.as_ref().map_or((None, None), |t| {
            // Shared copies (no allocation): the headers change while these are read.
            let uri = req.uri().clone();
            let host = req.headers().get(HOST).cloned();
            let authority = uri
                .authority()
                .map(Authority::as_str)
                .or_else(|| host.as_ref().and_then(|h| h.to_str().ok()))
                .unwrap_or("");
            let method = req.method().clone();
            let version = req.version();
            let started = t.start(
                req.headers_mut(),
                &RequestFacts {
                    scheme: if tls.is_some() { "https" } else { "http" },
                    authority,
                    path: uri.path_and_query().map_or("/", PathAndQuery::as_str),
                    method: method.as_str(),
                    version,
                    peer: down.peer,
                    edge: !internal && self.config.forwarded.use_remote_address,
                },
            );
            (Some(started.0), started.1)
        });
        let grpc_call = (grpc && self.grpc_stats.is_some()).then(Arc::<grpc_stats::Call>::default);
        let traced = span.as_ref().is_some_and(RequestSpan::sampled);
        if self.access_logs.is_empty() && self.istio_stats.is_none() && !traced {
            let mut picked = Picked {
                grpc_call: grpc_call.clone(),
                internal,
                peer_headers,
                span,
                ..Default::default()
            };
            let req = Self::count_grpc_request(&grpc_call, req.map(body::boxed));
            let mut resp = self.forward(view, down, remote, req, &mut picked).await;
            if let Some(s) = picked.span.as_mut() {
                s.on_response(resp.headers_mut());
            }
            self.finish(&picked, down, grpc, &mut resp);
            self.compress(compress, &mut resp);
            let resp = Self::count_grpc_response(&grpc_call, resp);
            return RequestTimer {
                _active: active,
                started,
                hcm: self,
            }
            .rides_on(resp);
        }

        // With access logs or Istio's stats: note the request, count bytes both ways,
        // log and record at the end.
        let logs = !self.access_logs.is_empty();
        let keep_headers = logs
            || traced
            || self
                .istio_stats
                .as_ref()
                .is_some_and(|s| s.needs_request_headers());
        let istio = self
            .istio_stats
            .as_ref()
            .map(|_| IstioEnd::new(&req, tls.as_deref(), grpc));
        let mut record = Record {
            start: Some(SystemTime::now()),
            method: Some(req.method().to_string()),
            path: req.uri().path_and_query().map(|p| p.to_string()),
            authority: request_authority(&req),
            scheme: Some(if tls.is_some() { "https" } else { "http" }),
            protocol: Some(protocol_name(req.version())),
            request_headers: keep_headers.then(|| req.headers().clone()),
            // The client as the connection manager determined it (`x-forwarded-for`
            // without `use_remote_address`), as Envoy's downstream remote address.
            downstream_remote: Some(remote),
            downstream_direct_remote: Some(down.peer),
            downstream_local: Some(down.local),
            requested_server_name: tls.as_ref().and_then(|t| t.sni.clone()),
            tls: tls.clone(),
            trace_forced: trace_reason
                == Some(crate::telemetry::tracing::decision::Reason::ServiceForced),
            trace_context: span.as_ref().map(RequestSpan::ids),
            ..Default::default()
        };
        let received = Arc::new(AtomicU64::new(0));
        let req = req.map(|b| body::boxed(Guarded::new(b, ByteCount(received.clone()), None)));
        let req = Self::count_grpc_request(&grpc_call, req);
        let mut picked = Picked {
            grpc_call: grpc_call.clone(),
            internal,
            peer_headers,
            wants_workload: self.istio_stats.is_some(),
            span,
            ..Default::default()
        };
        let mut resp = self.forward(view, down, remote, req, &mut picked).await;
        if let Some(s) = picked.span.as_mut() {
            s.on_response(resp.headers_mut());
        }
        let upstream_peer = self.finish(&picked, down, grpc, &mut resp);
        self.compress(compress, &mut resp);
        let resp = Self::count_grpc_response(&grpc_call, resp);
        record.response_code = resp.status().as_u16();
        if grpc {
            record.grpc_status = grpc_status_of(resp.headers());
        }
        record.response_flags = local_reply::flags_text(
            resp.extensions().get::<ResponseFlag>().copied(),
            picked.delayed,
            resp.extensions()
                .get::<RetryFlags>()
                .copied()
                .unwrap_or_default(),
        );
        if logs || traced {
            record.response_headers = Some(resp.headers().clone());
        }
        if resp.extensions().get::<ViaUpstream>().is_some() {
            record.response_code_details = Some("via_upstream");
        } else if let Some(d) = resp.extensions().get::<request_checks::Details>() {
            record.response_code_details = Some(d.0);
        } else if let Some(f) = resp.extensions().get::<ResponseFlag>() {
            record.response_code_details = f.details();
        }
        record.upstream_host = picked.host;
        record.upstream_local = resp
            .extensions()
            .get::<Arc<crate::upstream::http_pool::UpstreamConnInfo>>()
            .and_then(|u| u.local_addr);
        record.upstream_transport_failure_reason = resp
            .extensions()
            .get::<local_reply::TransportFailure>()
            .map(|t| t.0.clone());
        if let Some(m) = &picked.matched {
            record.upstream_cluster = m.cluster().map(|c| c.name().to_owned());
            record.route_name = Some(m.route.name.clone());
        }
        let istio = istio.zip(self.istio_stats.as_ref()).map(|(mut i, stats)| {
            let reporter = stats.reporter();
            i.peer = match reporter {
                crate::istio::stats::labels::Reporter::Destination => {
                    picked.peer_headers.peer.as_ref()
                }
                crate::istio::stats::labels::Reporter::Source => upstream_peer.as_ref(),
            }
            .and_then(|v| stats.peer_from_header(v))
            .or_else(|| match reporter {
                crate::istio::stats::labels::Reporter::Source => picked.workload.clone(),
                crate::istio::stats::labels::Reporter::Destination => None,
            });
            if reporter == crate::istio::stats::labels::Reporter::Source {
                // The upstream connection's identities, when it was TLS.
                let up = resp
                    .extensions()
                    .get::<Arc<crate::upstream::http_pool::UpstreamConnInfo>>();
                i.peer_principal = up.and_then(|u| u.peer_san.clone());
                i.local_principal = up.and_then(|u| u.local_san.clone());
            }
            if !stats.host_fallback() {
                i.host = None;
            }
            i.service = picked
                .matched
                .as_ref()
                .and_then(|m| m.cluster())
                .and_then(|c| c.config.istio_service.clone());
            i.messages = picked.grpc_call.clone();
            i.on_response(&resp);
            i.start_grpc_reports(stats, &record);
            i
        });
        let trace = picked.span.take().map(|span| TraceEnd {
            span,
            cluster: picked
                .matched
                .as_ref()
                .and_then(|m| m.cluster())
                .map(|c| (c.name().to_owned(), c.stat_name().to_owned())),
            metadata: std::mem::take(&mut picked.metadata),
            grpc_status: grpc.then(|| grpc_status_of(resp.headers())).flatten(),
            grpc_message: grpc
                .then(|| resp.headers().get("grpc-message"))
                .flatten()
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            grpc,
        });
        let end = RequestEnd {
            timer: RequestTimer {
                _active: active,
                started,
                hcm: self,
            },
            record,
            received,
            sent: 0,
            istio,
            trace,
        };
        let (parts, b) = resp.into_parts();
        Response::from_parts(parts, body::boxed(Guarded::new(b, end, None)))
    }

    /// `request_headers_timeout` ran out on an HTTP/1.1 connection: counted and
    /// logged as Envoy does (a request without method or path, 408,
    /// `request_header_timeout`); returns the reply's bytes.
    pub fn header_timeout_reply(
        &self,
        down: Downstream,
        waited: std::time::Duration,
    ) -> bytes::Bytes {
        let stats = &self.stats;
        stats.downstream_rq_total.inc();
        stats.downstream_rq_http1_total.inc();
        stats.downstream_rq_header_timeout.inc();
        stats.downstream_rq.record(408);
        let reply = super::header_timeout::reply_bytes(self.server_name.to_str().unwrap_or(""));
        let record = Record {
            start: Some(SystemTime::now() - waited),
            protocol: Some("HTTP/1.1"),
            response_code: 408,
            response_code_details: Some("request_header_timeout"),
            bytes_sent: "request header timeout".len() as u64,
            duration: waited,
            downstream_remote: Some(down.peer),
            downstream_local: Some(down.local),
            ..Default::default()
        };
        for log in self.access_logs.iter() {
            log.write(&record);
        }
        stats.downstream_rq_time.record(waited);
        reply
    }

    /// The `istio.alpn` override for a request to `cluster`: by the protocol it goes
    /// upstream with (HTTP/1.0 only when the cluster follows the downstream's), unless
    /// the cluster keeps its own ALPN.
    fn alpn_override(
        &self,
        cluster: &Cluster,
        h2: bool,
        version: Version,
    ) -> Option<&crate::istio::alpn::Override> {
        use crate::istio::alpn::Protocol;
        let config = self.istio_alpn.as_ref()?;
        if cluster.config.keep_alpn {
            return None;
        }
        let protocol = if h2 {
            Protocol::Http2
        } else if cluster.config.protocol == UpstreamProtocol::Downstream
            && version == Version::HTTP_10
        {
            Protocol::Http10
        } else {
            Protocol::Http11
        };
        config.for_protocol(protocol)
    }

    /// The grpc_stats filter's view of a gRPC request body (its messages).
    fn count_grpc_request(
        call: &Option<Arc<grpc_stats::Call>>,
        req: Request<Body>,
    ) -> Request<Body> {
        match call {
            Some(c) => {
                let c = c.clone();
                req.map(|b| grpc_stats::request_body(c, b))
            }
            None => req,
        }
    }

    /// ... and of its response (messages, and the call's outcome).
    fn count_grpc_response(
        call: &Option<Arc<grpc_stats::Call>>,
        resp: Response<Body>,
    ) -> Response<Body> {
        match call {
            Some(c) => {
                let (parts, b) = resp.into_parts();
                let b = grpc_stats::response(c.clone(), &parts.headers, b);
                Response::from_parts(parts, b)
            }
            None => resp,
        }
    }

    /// The compressor filters on the response (`compress` is what they noted of the
    /// request: its `accept-encoding`, and whether it was a HEAD).
    fn compress(&self, compress: Option<(Option<HeaderValue>, bool)>, resp: &mut Response<Body>) {
        if let Some((accept, head)) = compress {
            let bodiless = head || hyper::body::Body::is_end_stream(resp.body());
            compressor::on_response(&self.compressors, accept.as_ref(), bodiless, resp);
        }
    }

    /// `normalize_path` / `merge_slashes` on the request's path, before routing and
    /// logging (as Envoy does); a path that cannot be rebuilt is a 400.
    #[allow(clippy::result_large_err)]
    fn normalize<B>(&self, req: &mut Request<B>) -> Result<(), Response<Body>> {
        let Some(pq) = req.uri().path_and_query() else {
            return Ok(());
        };
        let Some(new) = path_normalize::normalize(
            pq.as_str(),
            self.config.normalize_path,
            self.config.merge_slashes,
        ) else {
            return Ok(());
        };
        let mut parts = req.uri().clone().into_parts();
        parts.path_and_query = Some(new.parse().map_err(|_| bad_request())?);
        *req.uri_mut() = Uri::from_parts(parts).map_err(|_| bad_request())?;
        Ok(())
    }

    /// Everything a response gets once routing is done: the route's response header
    /// mutations (upstream responses and local replies after routing alike, as Envoy),
    /// the response-code stats and the `server` header.
    /// Returns the upstream peer's Istio metadata the response carried (taken off it).
    fn finish(
        &self,
        picked: &Picked<'_>,
        down: Downstream,
        grpc: bool,
        resp: &mut Response<Body>,
    ) -> Option<HeaderValue> {
        if grpc {
            local_reply::to_grpc(resp);
        }
        if let Some(cors) = &picked.cors {
            cors.apply(resp.headers_mut());
        }
        for (k, v) in &picked.authz_response {
            resp.headers_mut().append(k.clone(), v.clone());
        }
        if let Some(m) = &picked.matched {
            if m.attempt_count().1 && picked.attempts > 0 {
                resp.headers_mut().insert(
                    headers::X_ENVOY_ATTEMPT_COUNT,
                    headers::decimal(u64::from(picked.attempts)),
                );
            }
            let levels = || m.header_levels(false);
            if levels().next().is_some() {
                let ctx = levels().any(|l| l.is_formatted()).then(|| Record {
                    response_code: resp.status().as_u16(),
                    response_headers: Some(resp.headers().clone()),
                    upstream_host: picked.host,
                    upstream_cluster: m.cluster().map(|c| c.name().to_owned()),
                    route_name: Some(m.route.name.clone()),
                    downstream_remote: Some(down.peer),
                    downstream_local: Some(down.local),
                    start: Some(SystemTime::now()),
                    ..Default::default()
                });
                header_mutation::apply_all(levels(), resp.headers_mut(), ctx.as_ref());
            }
        }
        let upstream_peer = self
            .peer_metadata
            .as_ref()
            .and_then(|p| p.on_response(resp.headers_mut(), &picked.peer_headers));
        self.stats.downstream_rq.record(resp.status().as_u16());
        resp.headers_mut()
            .insert(header::SERVER, self.server_name.clone());
        upstream_peer
    }

    async fn forward<'a>(
        &'a self,
        (routes, clusters): (Option<&'a Routes>, &'a ClusterMap),
        down: Downstream,
        remote: SocketAddr,
        mut req: Request<Body>,
        picked: &mut Picked<'a>,
    ) -> Response<Body> {
        let stream_start = tokio::time::Instant::now();
        // What Envoy's HTTP/1 codec would refuse never goes further.
        if let Some(resp) = request_checks::check_http1(&mut req, &self.config.http1) {
            return resp;
        }
        // The TLS peer (RBAC's `authenticated` principal, `requested_server_name`).
        let tls = req.extensions().get::<Arc<crate::tls::PeerInfo>>().cloned();
        // The body stays aside while filters look at the request (ext_authz may
        // buffer it), and goes back before it is forwarded.
        let mut body_slot = std::mem::replace(req.body_mut(), body::empty());
        // A request body the client breaks (a malformed chunk) fails the attempt
        // reading it; that is the client's error, answered 400 as Envoy's codec does.
        let body_broken = Arc::new(AtomicBool::new(false));
        if !hyper::body::Body::is_end_stream(&body_slot) {
            let flag = body_broken.clone();
            body_slot = http_body_util::BodyExt::boxed(http_body_util::BodyExt::map_err(
                body_slot,
                move |e| {
                    flag.store(true, Ordering::Relaxed);
                    e
                },
            ));
        }
        let mut authorized: Option<ext_authz::Allowed> = None;
        let mut jwt_outputs: Option<jwt_authn::Outputs> = None;
        let authority = request_authority(&req);
        let path = req
            .uri()
            .path_and_query()
            .map(PathAndQuery::as_str)
            .unwrap_or("/");
        let head = RequestHead {
            method: req.method().as_str(),
            scheme: "http",
            authority: authority.as_deref().unwrap_or(""),
            path_and_query: path,
            headers: req.headers(),
        };
        let Some(matched) = routes.and_then(|r| r.route(&head, clusters)) else {
            self.stats.no_route.inc();
            return local_reply::reply(ResponseFlag::NoRouteFound);
        };
        picked.matched = Some(matched.clone());
        if let Some(span) = picked.span.as_mut() {
            span.on_route(matched.route.decorator.as_ref());
        }
        let mut _fault = None;
        for filter in &self.filters {
            match filter {
                Filter::Cors { name, stats } => {
                    let Some(FilterOverride::Cors(policy)) = matched.filter_override(name) else {
                        continue;
                    };
                    match policy.decide(req.method(), req.headers(), stats) {
                        cors::Decision::Pass => {}
                        cors::Decision::Reply(resp) => return resp,
                        cors::Decision::Decorate(d) => picked.cors = Some(d),
                    }
                }
                Filter::Fault {
                    name,
                    config,
                    stats,
                } => {
                    let cfg = match matched.filter_override(name) {
                        Some(FilterOverride::Fault(f)) => f.as_ref(),
                        _ => config,
                    };
                    let cluster = matched.cluster().map(|c| c.name());
                    let outcome = cfg.decide(&head, cluster, stats);
                    _fault = outcome.active;
                    if let Some(d) = outcome.delay {
                        picked.delayed = true;
                        tokio::time::sleep(d).await;
                    }
                    if let Some(abort) = outcome.abort {
                        stats.aborts_injected.inc();
                        return abort;
                    }
                }
                Filter::Rbac {
                    name,
                    config,
                    stats,
                } => {
                    let cfg = match matched.filter_override(name) {
                        Some(FilterOverride::Rbac(Some(c))) => c.as_ref(),
                        // `RBACPerRoute` without rules: off for this route.
                        Some(FilterOverride::Rbac(None)) => continue,
                        _ => config.as_ref(),
                    };
                    let subject = crate::rbac::Subject {
                        peer: down.peer,
                        remote,
                        local: down.local,
                        server_name: tls.as_ref().and_then(|t| t.sni.as_deref()),
                        peer_principal: tls.as_ref().and_then(|t| t.uri_san.as_deref()),
                        request: Some(&head),
                        metadata: Some(&picked.metadata),
                    };
                    let decision = cfg.check(&subject, stats);
                    if let Some(shadow) = decision.shadow {
                        for (k, v) in cfg.shadow_metadata(shadow) {
                            picked
                                .metadata
                                .set(dynamic_metadata::HTTP_RBAC, k, v.into());
                        }
                    }
                    if !decision.allowed {
                        return local_reply::reply(ResponseFlag::RbacAccessDenied);
                    }
                }
                Filter::JwtAuthn {
                    name,
                    config,
                    stats,
                } => {
                    let per_route = match matched.filter_override(name) {
                        Some(FilterOverride::JwtAuthn(p)) => Some(p.as_ref()),
                        _ => None,
                    };
                    let request = jwt_authn::Request {
                        head: &head,
                        scheme: if tls.is_some() { "https" } else { "http" },
                    };
                    match config
                        .check(clusters, request, per_route, &mut picked.metadata, stats)
                        .await
                    {
                        jwt_authn::Verdict::Reply(resp) => return resp,
                        jwt_authn::Verdict::Allow(o) => jwt_outputs = Some(o),
                    }
                }
                Filter::ExtAuthz {
                    name,
                    config,
                    stats,
                } => {
                    let per_route = match matched.filter_override(name) {
                        Some(FilterOverride::ExtAuthz(p)) => Some(p.as_ref()),
                        _ => None,
                    };
                    let attrs = ext_authz::Attributes {
                        peer: down.peer,
                        local: down.local,
                        protocol: protocol_name(req.version()),
                        cluster: matched.cluster().map(|c| c.stat_name()),
                    };
                    let verdict = config
                        .check(
                            clusters,
                            &req,
                            &mut body_slot,
                            &attrs,
                            per_route,
                            &picked.metadata,
                            stats,
                        )
                        .await;
                    match verdict {
                        ext_authz::Verdict::Reply(resp) => return resp,
                        ext_authz::Verdict::Allow(a) => {
                            picked.authz_response.extend(a.response.iter().cloned());
                            authorized = Some(a);
                        }
                    }
                }
            }
        }
        let (cluster, timeout, route_upgrades, idle) = match &matched.target {
            Target::Forward {
                cluster,
                timeout,
                upgrades,
                idle_timeout,
                grpc_timeout,
                ..
            } => (
                cluster.clone(),
                match grpc_timeout {
                    Some(g) if headers::is_grpc(req.headers()) => {
                        g.apply(headers::grpc_timeout(req.headers()))
                    }
                    _ => *timeout,
                },
                *upgrades,
                // The route's `idle_timeout` replaces the connection manager's.
                idle_timeout
                    .or(self.config.stream_idle_timeout)
                    .filter(|d| !d.is_zero())
                    .map(Activity::new),
            ),
            Target::Redirect(r) => {
                let location =
                    redirect::location(r, &matched.route.matcher.path, head.authority, path);
                return redirect::redirect_response(r, &location);
            }
            Target::Direct(d) => {
                let mut resp = redirect::direct_response(d);
                resp.extensions_mut()
                    .insert(request_checks::Details("direct_response"));
                return resp;
            }
            Target::NoCluster => {
                self.stats.no_cluster.inc();
                return local_reply::reply(ResponseFlag::NoClusterFound);
            }
        };
        if let (Some(gs), Some(call)) = (&self.grpc_stats, &picked.grpc_call) {
            gs.routed(call, cluster.stat_name(), head.path_and_query);
        }
        // The stream's limits: its maximum duration (the route's, else the connection
        // manager's) and the time the whole request may take to arrive.
        let limits = StreamLimits {
            end: match &matched.target {
                Target::Forward {
                    max_stream_duration,
                    ..
                } => max_stream_duration.or(self.config.max_stream_duration),
                _ => None,
            }
            .filter(|d| !d.is_zero())
            .map(|d| stream_start + d),
            request: match self.config.request_timeout {
                Some(t) if !hyper::body::Body::is_end_stream(&body_slot) => {
                    let done = RequestDone::default();
                    body_slot = body::boxed(Guarded::new(body_slot, done.clone(), None));
                    Some((stream_start + t, done))
                }
                _ => None,
            },
            down_h2: req.version() == Version::HTTP_2,
        };
        *req.body_mut() = body_slot;
        if let Some(o) = &jwt_outputs {
            o.apply(&mut req);
        }
        if let Some(a) = &authorized {
            a.apply(req.headers_mut());
        }
        if let Some(span) = picked.span.as_mut() {
            span.on_upstream_request(req.headers_mut());
        }
        let dst = original_dst(&cluster.config, &req, down.local);
        // The virtual cluster counts the request beside the cluster.
        let vcluster = matched.virtual_cluster(&RequestHead {
            method: req.method().as_str(),
            scheme: "http",
            authority: authority.as_deref().unwrap_or(""),
            path_and_query: req.uri().path_and_query().map_or("/", PathAndQuery::as_str),
            headers: req.headers(),
        });
        let charge = Charge {
            cluster: &cluster.stats,
            vcluster: vcluster.as_deref(),
        };
        // A hashing balancer takes the route's hash of the request.
        let hashed = match &matched.target {
            Target::Forward {
                hash_policy: Some(p),
                ..
            } if cluster.config.lb.policy.hashes() => p.compute(&hash_policy::Request {
                headers: req.headers(),
                uri: req.uri(),
                method: req.method(),
                peer: down.peer,
                local: down.local,
            }),
            _ => hash_policy::Hashed::default(),
        };
        let Some(host) = cluster.pick_hashed(Some(dst), hashed.hash) else {
            cluster.stats.upstream_cx_none_healthy.inc();
            charge.code(503);
            return local_reply::reply(ResponseFlag::NoHealthyUpstream);
        };
        picked.picked(&host);
        // An upgrade goes upstream over HTTP/1.1, whatever the cluster speaks.
        let upgrade = upgrade::requested(&req);
        let mut down_upgrade = None;
        if let Some(kind) = &upgrade {
            if !upgrade::allowed(kind, route_upgrades, &self.config.upgrades) {
                if kind.as_bytes().eq_ignore_ascii_case(b"websocket") {
                    self.stats.downstream_rq_ws_on_non_ws_route.inc();
                }
                return upgrade::forbidden();
            }
            self.stats.downstream_cx_upgrades_total.inc();
            down_upgrade = Some(hyper::upgrade::on(&mut req));
        }
        // `auto_host_rewrite`: the chosen host's name, when it has one.
        let auto_host =
            matches!(matched.target, Target::Forward { rewrite, .. } if rewrite.auto_host);
        let authority = match &host.hostname {
            Some(name) if auto_host => Some(name.to_string()),
            _ => authority,
        };
        let h2 = upgrade.is_none()
            && match cluster.config.protocol {
                UpstreamProtocol::Http1 => false,
                UpstreamProtocol::Http2 => true,
                UpstreamProtocol::Downstream => req.version() == Version::HTTP_2,
            };
        let alpn = self.alpn_override(&cluster, h2, req.version());
        // The route's retry policy (an upgrade is never retried: its body is a tunnel);
        // an internal request's headers may ask for retries on a route without one.
        let trusted = picked.internal.then(|| req.headers());
        let policy = match &matched.target {
            Target::Forward { retry, .. } if upgrade.is_none() => {
                (*retry).or(trusted.is_some().then(|| &*DEFAULT_RETRY))
            }
            _ => None,
        };
        let mut retry = policy.and_then(|p| {
            let head = RequestHead {
                method: req.method().as_str(),
                scheme: "http",
                authority: authority.as_deref().unwrap_or(""),
                path_and_query: req.uri().path_and_query().map_or("/", PathAndQuery::as_str),
                headers: req.headers(),
            };
            RetryState::new(p, &head, trusted, vcluster.clone())
        });
        let (mut per_try, per_try_idle) = retry.as_ref().map_or((None, None), |r| {
            (r.policy().per_try_timeout, r.policy().per_try_idle_timeout)
        });
        let mut timeout = timeout;
        if let Some(h) = trusted {
            // `x-envoy-upstream-rq-timeout-ms` replaces the route's timeout (0: none),
            // `x-envoy-upstream-rq-per-try-timeout-ms` the per-try timeout.
            let ms = |name: &str| {
                h.get(name)
                    .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                    .map(std::time::Duration::from_millis)
            };
            if let Some(t) = ms("x-envoy-upstream-rq-timeout-ms") {
                timeout = Some(t).filter(|t| !t.is_zero());
            }
            if retry.is_some()
                && let Some(t) = ms("x-envoy-upstream-rq-per-try-timeout-ms")
            {
                per_try = Some(t).filter(|t| !t.is_zero());
            }
        }
        // Envoy's control headers are spent here; the upstream does not get them.
        if trusted.is_some() {
            for name in ROUTER_HEADERS {
                req.headers_mut().remove(name);
            }
        }
        // The upstream is told the time it has: the per-try timeout when shorter (a
        // hedged attempt may outlive it: then the route's).
        let hedging = retry
            .as_ref()
            .is_some_and(|r| r.policy().hedge_on_per_try_timeout);
        let expected = match (timeout, per_try) {
            (t, _) if hedging => t,
            (Some(t), Some(p)) => Some(t.min(p)),
            (t, p) => t.or(p),
        };
        // The mirrors this request is copied to (chosen on the downstream headers).
        let mirror_to: Vec<(Arc<Cluster>, bool)> = match &matched.target {
            Target::Forward { mirrors, .. } if upgrade.is_none() => mirrors
                .iter()
                .filter_map(|m| m.pick(req.headers(), clusters).map(|c| (c, m.keep_host)))
                .collect(),
            _ => Vec::new(),
        };
        // Istio's peer metadata filter, before the router's header mutations.
        if let Some(p) = &self.peer_metadata {
            p.on_upstream_request(req.headers_mut(), cluster.config.istio_marks);
        }
        let upstream_req = match self.upstream_request(req, &matched, down, authority, h2, expected)
        {
            Ok(r) => r,
            Err(resp) => return resp,
        };
        // With retries or mirrors the head is kept to send again and the body made
        // replayable.
        let mut first = None;
        let resend = if retry.is_some() || !mirror_to.is_empty() {
            Some(Resend::new(
                upstream_req,
                self.config.buffer_limit,
                &cluster.stats.retry_or_shadow_abandoned,
            ))
        } else {
            first = Some(upstream_req);
            None
        };
        if let Some(r) = &resend {
            for (mirror, keep_host) in mirror_to {
                let copy = r.copy(timeout, dst, mirror.config.buffer_limit);
                mirror::send(mirror, copy, keep_host);
            }
        }

        let stats = &cluster.stats;
        // One timer serves the whole request, retries included: response headers,
        // then the body.
        let mut deadline = timeout.map(|t| Box::pin(tokio::time::sleep(t)));
        let mut host = host;
        let mut attempt = 1;
        let mut retry_flags = RetryFlags::default();
        // Hedging on per-try timeouts runs attempts side by side (never an upgrade).
        let hedge = match (&mut retry, &resend) {
            (Some(rs), Some(r))
                if rs.policy().hedge_on_per_try_timeout
                    && rs.policy().per_try_timeout.is_some()
                    && upgrade.is_none() =>
            {
                Some((rs, r))
            }
            _ => None,
        };
        let (outcome, active, start, try_deadline) = if let Some((rs, r)) = hedge {
            let hedging = Hedging {
                cluster: &cluster,
                resend: r,
                idle: idle.as_ref(),
                h2,
                alpn,
                dst,
                hash: hashed.hash,
                count_header: matched.attempt_count().0,
                limits: &limits,
                charge,
            };
            match self
                .hedged(hedging, host, rs, &mut deadline, picked, &mut retry_flags)
                .await
            {
                Ok((outcome, active, start)) => (outcome, active, start, None),
                Err(reply) => return reply,
            }
        } else {
            loop {
                picked.picked(&host);
                picked.attempts = attempt;
                let mut upstream_req = match (&resend, first.take()) {
                    (Some(r), _) => {
                        // What is left of the route's timeout, or the per-try timeout if
                        // shorter.
                        let left = deadline.as_ref().map(|d| {
                            d.deadline()
                                .saturating_duration_since(Instant::now().into())
                        });
                        let expected = match (left, per_try) {
                            (Some(l), Some(p)) => Some(l.min(p)),
                            (l, p) => l.or(p),
                        };
                        r.request(attempt, matched.attempt_count().0, expected)
                    }
                    (None, Some(r)) => r,
                    (None, None) => unreachable!("a request without retries is sent once"),
                };
                if let Some(activity) = &idle {
                    // Request data counts as activity for the route's idle timeout.
                    let activity = activity.clone();
                    upstream_req =
                        upstream_req.map(|b| body::boxed(Guarded::new(b, activity, None)));
                }
                let try_idle = per_try_idle.map(Activity::new);
                if let Some(activity) = &try_idle {
                    let activity = activity.clone();
                    upstream_req =
                        upstream_req.map(|b| body::boxed(Guarded::new(b, activity, None)));
                }
                if let Some(kind) = &upgrade {
                    upgrade::restore_headers(upstream_req.headers_mut(), kind.clone());
                }
                charge.mark(&mut upstream_req);
                if let Some(o) = alpn {
                    upstream_req.extensions_mut().insert(o.clone());
                }
                let up_span = picked
                    .span
                    .as_ref()
                    .filter(|s| s.spawns_upstream())
                    .map(|s| {
                        s.upstream_span(
                            cluster.stat_name(),
                            cluster.name(),
                            upstream_req.headers_mut(),
                        )
                    });
                let active: Attempt = (GaugeGuard::new(&stats.upstream_rq_active), host.track());
                let start = Instant::now();
                let mut try_deadline = per_try.map(|t| Box::pin(tokio::time::sleep(t)));
                // Pinned where they are, in a block that ends them: the request's futures
                // are large, and each move into a `select!` would copy them.
                let outcome = {
                    let sent = std::pin::pin!(async {
                        let r = match upgrade {
                            Some(_) => http_pool::send_upgrade(&cluster, &host, upstream_req).await,
                            None => http_pool::send(&cluster, &host, upstream_req, h2).await,
                        };
                        report_outlier(&cluster, &host, &r);
                        r
                    });
                    let timers = std::pin::pin!(async {
                        let route = async {
                            match deadline.as_mut() {
                                Some(d) => d.as_mut().await,
                                None => std::future::pending().await,
                            }
                        };
                        let this_try = async {
                            match try_deadline.as_mut() {
                                Some(d) => d.as_mut().await,
                                None => std::future::pending().await,
                            }
                        };
                        let try_quiet = async {
                            match &try_idle {
                                Some(a) => a.expired().await,
                                None => std::future::pending().await,
                            }
                        };
                        let went_idle = async {
                            match &idle {
                                Some(activity) => activity.expired().await,
                                None => std::future::pending().await,
                            }
                        };
                        tokio::select! {
                            biased;
                            () = route => Outcome::RouteTimeout,
                            () = this_try => Outcome::PerTryTimeout,
                            () = try_quiet => Outcome::PerTryIdle,
                            () = went_idle => Outcome::StreamIdle,
                            o = limits.reached() => o,
                        }
                    });
                    tokio::select! {
                        biased;
                        r = sent => Outcome::Sent(r),
                        o = timers => o,
                    }
                };
                let outcome = match outcome {
                    Outcome::Sent(Err(_)) if body_broken.load(Ordering::Relaxed) => {
                        return request_checks::codec_error(
                            http::StatusCode::BAD_REQUEST,
                            "http1.codec_error",
                        );
                    }
                    Outcome::Sent(r) => sent_outcome(r, attempt > 1, cluster.name()),
                    Outcome::PerTryTimeout | Outcome::PerTryIdle => {
                        host.counters.rq_timeout.fetch_add(1, Ordering::Relaxed);
                        cluster.report(&host, HostResult::Timeout);
                        let details = if matches!(outcome, Outcome::PerTryIdle) {
                            stats.upstream_rq_per_try_idle_timeout.inc();
                            "upstream_per_try_idle_timeout"
                        } else {
                            stats.upstream_rq_per_try_timeout.inc();
                            "upstream_per_try_timeout"
                        };
                        let mut resp = local_reply::reply(ResponseFlag::UpstreamRequestTimeout);
                        resp.extensions_mut()
                            .insert(request_checks::Details(details));
                        Err((Failure::PerTryTimeout, resp))
                    }
                    // The route's timeout ends the request, whatever retries remain.
                    Outcome::RouteTimeout => {
                        host.counters.rq_timeout.fetch_add(1, Ordering::Relaxed);
                        cluster.report(&host, HostResult::Timeout);
                        charge.timeout();
                        let mut resp = local_reply::reply(ResponseFlag::UpstreamRequestTimeout);
                        retry_flags.mark(&mut resp);
                        return resp;
                    }
                    Outcome::StreamIdle => {
                        self.stats.downstream_rq_idle_timeout.inc();
                        return local_reply::reply(ResponseFlag::StreamIdleTimeout);
                    }
                    o @ (Outcome::MaxDuration | Outcome::RequestTimeout) => {
                        return self.limit_reply(o, &limits);
                    }
                };
                if let Some(s) = up_span {
                    let (status, flags) = attempt_result(&outcome);
                    s.finish(status, flags, Some(host.addr), h2);
                }
                // Past the buffer limit the body cannot be sent again: no more retries.
                if resend.as_ref().is_some_and(|r| !r.replayable()) {
                    retry = None;
                }
                let decision = match (&mut retry, &outcome) {
                    (Some(rs), Ok(resp)) => rs.on_response(resp.status(), resp.headers(), &cluster),
                    (Some(rs), Err((f, _))) => rs.on_failure(*f, &cluster),
                    (None, _) => Decision::No,
                };
                let wait = match decision {
                    Decision::Retry(wait) => wait,
                    Decision::No => break (outcome, active, start, try_deadline),
                    Decision::LimitExceeded => {
                        retry_flags.limit_exceeded = true;
                        break (outcome, active, start, try_deadline);
                    }
                    Decision::Overflow => {
                        retry_flags.overflow = true;
                        break (outcome, active, start, try_deadline);
                    }
                };
                // Retried: this attempt's response is dropped (its connection with it), and
                // its status is not counted (Envoy counts the one that ends the request).
                drop((outcome, active));
                let Some(rs) = retry.as_mut() else {
                    unreachable!("only a request with retries is retried")
                };
                rs.tried.push(host.addr);
                rs.tried_priorities.push(host.attrs().priority);
                // The body read on meanwhile is kept for the retry; if it passes the
                // buffer limit with no attempt out, the request fails (Envoy's 507).
                let backoff = tokio::time::sleep(wait);
                let route_deadline = async {
                    match deadline.as_mut() {
                        Some(d) => d.as_mut().await,
                        None => std::future::pending().await,
                    }
                };
                let read_ahead = async {
                    match &resend {
                        Some(r) => r.read_ahead().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    biased;
                    () = route_deadline => {
                        charge.timeout();
                        return local_reply::reply(ResponseFlag::UpstreamRequestTimeout);
                    }
                    () = read_ahead => {
                        // The body is still arriving: an HTTP/1.1 connection closes.
                        let mut resp = local_reply::reply(ResponseFlag::RetryBufferExceeded);
                        if !limits.down_h2 {
                            resp.headers_mut()
                                .insert(header::CONNECTION, HeaderValue::from_static("close"));
                        }
                        return resp;
                    }
                    () = backoff => rs.started(&cluster),
                }
                let Some(next) = retry_host(&cluster, rs, dst, hashed.hash) else {
                    cluster.stats.upstream_cx_none_healthy.inc();
                    charge.code(503);
                    return local_reply::reply(ResponseFlag::NoHealthyUpstream);
                };
                host = next;
                attempt += 1;
            }
        };
        let resp = match outcome {
            Ok(resp) => resp,
            Err((_, mut reply)) => {
                charge.code(reply.status().as_u16());
                retry_flags.mark(&mut reply);
                return reply;
            }
        };
        charge.code(resp.status().as_u16());
        stats.upstream_rq_completed.inc();
        let mut resp = resp;
        if let Some(down_upgrade) = down_upgrade
            && resp.status() == http::StatusCode::SWITCHING_PROTOCOLS
        {
            let up_upgrade = hyper::upgrade::on(&mut resp);
            upgrade::tunnel(
                down_upgrade,
                up_upgrade,
                self.stats.downstream_cx_upgrades_active.clone(),
            );
            let (mut parts, _) = resp.into_parts();
            let accepted = parts.headers.get(header::UPGRADE).cloned();
            headers::strip_hop_by_hop(&mut parts.headers);
            if let Some(kind) = accepted {
                upgrade::restore_headers(&mut parts.headers, kind);
            }
            return Response::from_parts(parts, body::empty());
        }
        let (mut parts, incoming) = resp.into_parts();
        headers::strip_hop_by_hop(&mut parts.headers);
        parts.headers.insert(
            headers::X_ENVOY_UPSTREAM_SERVICE_TIME,
            headers::decimal(start.elapsed().as_millis() as u64),
        );
        // The body is bounded by the route's timeout, this attempt's and the stream's
        // maximum duration, whichever ends first (then the stream is reset).
        let deadline = [
            deadline,
            try_deadline,
            limits.end.map(|e| Box::pin(tokio::time::sleep_until(e))),
        ]
        .into_iter()
        .flatten()
        .min_by_key(|d| d.deadline());
        if let Some(cookie) = hashed.set_cookie {
            parts.headers.append(header::SET_COOKIE, cookie);
        }
        let rq_time = RqTime {
            cluster: cluster.clone(),
            vcluster,
            start: stream_start,
        };
        let body = Guarded::new(incoming, (active, rq_time), deadline).with_idle(idle);
        let mut resp = Response::from_parts(parts, body::boxed(body));
        resp.extensions_mut().insert(ViaUpstream);
        retry_flags.mark(&mut resp);
        resp
    }

    /// The reply when a stream limit passes before response headers: 504 `downstream
    /// duration timeout` for the maximum duration, 408 `request timeout` (closing an
    /// HTTP/1 connection) for the request timeout, as Envoy answers.
    fn limit_reply(&self, o: Outcome, limits: &StreamLimits) -> Response<Body> {
        if matches!(o, Outcome::MaxDuration) {
            self.stats.downstream_rq_max_duration_reached.inc();
            return local_reply::reply(ResponseFlag::MaxDurationReached);
        }
        self.stats.downstream_rq_timeout.inc();
        let mut resp = local_reply::reply(ResponseFlag::RequestTimeout);
        if !limits.down_h2 {
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }

    /// Hedging (`hedge_on_per_try_timeout`): an attempt past its per-try timeout is not
    /// reset; the retry goes out beside it, and the first answer the policy would not
    /// retry wins (the others are reset as they are dropped). A retriable answer while
    /// another attempt is still out is set aside without using a retry, as Envoy waits
    /// for the others. Returns the winning outcome, or the local reply that ends the
    /// request (route timeout, stream idle, no host).
    #[allow(clippy::type_complexity)]
    async fn hedged(
        &self,
        h: Hedging<'_>,
        mut host: Arc<Host>,
        rs: &mut RetryState<'_>,
        deadline: &mut Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
        picked: &mut Picked<'_>,
        retry_flags: &mut RetryFlags,
    ) -> Result<
        (
            Result<Response<PooledBody>, (Failure, Response<Body>)>,
            Attempt,
            Instant,
        ),
        Response<Body>,
    > {
        use futures_util::stream::{FuturesUnordered, StreamExt};
        let cluster = h.cluster;
        let stats = &cluster.stats;
        let per_try = rs.policy().per_try_timeout;
        let mut running = FuturesUnordered::new();
        let mut attempt = 0;
        let mut launch_now = true;
        // The back-off before the next attempt, and the newest attempt's per-try timer.
        let mut launch_at = None;
        let mut try_deadline = None;
        // The newest attempt; older ones passed their per-try timeout.
        let mut newest = 0;
        async fn until(t: &mut Option<std::pin::Pin<Box<tokio::time::Sleep>>>) {
            match t {
                Some(t) => t.as_mut().await,
                None => std::future::pending().await,
            }
        }
        loop {
            if std::mem::take(&mut launch_now) {
                attempt += 1;
                picked.picked(&host);
                picked.attempts = attempt;
                // A hedged attempt is told what is left of the route's timeout.
                let left = deadline.as_ref().map(|d| {
                    d.deadline()
                        .saturating_duration_since(Instant::now().into())
                });
                let mut req = h.resend.request(attempt, h.count_header, left);
                if let Some(a) = h.idle {
                    let a = a.clone();
                    req = req.map(|b| body::boxed(Guarded::new(b, a, None)));
                }
                let active: Attempt = (GaugeGuard::new(&stats.upstream_rq_active), host.track());
                let (c, to, n, h2) = (cluster.clone(), host.clone(), attempt, h.h2);
                h.charge.mark(&mut req);
                if let Some(o) = h.alpn {
                    req.extensions_mut().insert(o.clone());
                }
                let up_span = picked
                    .span
                    .as_ref()
                    .filter(|s| s.spawns_upstream())
                    .map(|s| {
                        s.upstream_span(cluster.stat_name(), cluster.name(), req.headers_mut())
                    });
                newest = attempt;
                running.push(async move {
                    let start = Instant::now();
                    let r = http_pool::send(&c, &to, req, h2).await;
                    report_outlier(&c, &to, &r);
                    (to, n, active, start, r, up_span)
                });
                try_deadline = per_try.map(|t| Box::pin(tokio::time::sleep(t)));
            }
            let went_idle = async {
                match h.idle {
                    Some(a) => a.expired().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                Some((to, n, active, start, r, up_span)) = running.next() => {
                    let outcome = sent_outcome(r, n > 1, cluster.name());
                    if let Some(s) = up_span {
                        let (status, flags) = attempt_result(&outcome);
                        s.finish(status, flags, Some(to.addr), h.h2);
                    }
                    let retriable = match &outcome {
                        Ok(resp) => rs.retriable_response(resp.status(), resp.headers()),
                        Err((f, _)) => rs.retriable_failure(*f),
                    };
                    if retriable && (!running.is_empty() || launch_at.is_some()) {
                        continue;
                    }
                    // An attempt already hedged is not judged again (as Envoy): its
                    // answer ends the request.
                    if n != newest {
                        picked.picked(&to);
                        return Ok((outcome, active, start));
                    }
                    let decision = match &outcome {
                        Ok(resp) => rs.on_response(resp.status(), resp.headers(), cluster),
                        Err((f, _)) => rs.on_failure(*f, cluster),
                    };
                    match decision {
                        Decision::Retry(wait) => {
                            rs.tried.push(to.addr);
                            rs.tried_priorities.push(to.attrs().priority);
                            try_deadline = None;
                            launch_at = Some(Box::pin(tokio::time::sleep(wait)));
                        }
                        d => {
                            retry_flags.limit_exceeded |= d == Decision::LimitExceeded;
                            retry_flags.overflow |= d == Decision::Overflow;
                            picked.picked(&to);
                            return Ok((outcome, active, start));
                        }
                    }
                }
                () = until(deadline) => {
                    h.charge.timeout();
                    let mut resp = local_reply::reply(ResponseFlag::UpstreamRequestTimeout);
                    retry_flags.mark(&mut resp);
                    return Err(resp);
                }
                () = until(&mut try_deadline) => {
                    // The attempt keeps running (not counted as a per-try timeout, as
                    // Envoy); another goes out beside it while retries remain.
                    try_deadline = None;
                    match rs.on_hedge(cluster) {
                        Decision::Retry(wait) => {
                            rs.tried.push(host.addr);
                            rs.tried_priorities.push(host.attrs().priority);
                            launch_at = Some(Box::pin(tokio::time::sleep(wait)));
                        }
                        Decision::LimitExceeded => retry_flags.limit_exceeded = true,
                        Decision::Overflow => retry_flags.overflow = true,
                        Decision::No => {}
                    }
                }
                () = until(&mut launch_at) => {
                    launch_at = None;
                    rs.started(cluster);
                    match retry_host(cluster, rs, h.dst, h.hash) {
                        Some(next) => {
                            host = next;
                            launch_now = true;
                        }
                        None if running.is_empty() => {
                            stats.upstream_cx_none_healthy.inc();
                            h.charge.code(503);
                            return Err(local_reply::reply(ResponseFlag::NoHealthyUpstream));
                        }
                        None => {}
                    }
                }
                () = went_idle => {
                    self.stats.downstream_rq_idle_timeout.inc();
                    return Err(local_reply::reply(ResponseFlag::StreamIdleTimeout));
                }
                o = h.limits.reached() => return Err(self.limit_reply(o, h.limits)),
            }
        }
    }

    /// The request as the upstream gets it: origin-form with `host` for HTTP/1.1, absolute
    /// (`:authority`) for HTTP/2, without hop-by-hop headers, with Envoy's added headers.
    #[allow(clippy::result_large_err)]
    fn upstream_request(
        &self,
        req: Request<Body>,
        matched: &Matched<'_>,
        down: Downstream,
        mut authority: Option<String>,
        h2: bool,
        timeout: Option<std::time::Duration>,
    ) -> Result<Request<Body>, Response<Body>> {
        let rewrite = match matched.target {
            Target::Forward { rewrite, .. } => Some(rewrite),
            _ => None,
        };
        let (mut parts, body) = req.into_parts();
        let route = matched.route;
        if let Some(rw) = rewrite.and_then(|r| r.path.as_ref()) {
            let original = parts.uri.path_and_query().map_or("/", PathAndQuery::as_str);
            let new = rewrite::path(rw, &route.matcher.path, original);
            let new = PathAndQuery::try_from(new).map_err(|_| bad_request())?;
            parts.headers.insert(
                headers::X_ENVOY_ORIGINAL_PATH,
                HeaderValue::from_str(original).map_err(|_| bad_request())?,
            );
            parts.uri = Uri::from(new);
        }
        if let Some(host) = rewrite.and_then(|r| r.host.as_ref()) {
            authority = Some(host.clone());
        }
        if let Some(host) = rewrite
            .and_then(|r| r.host_from_header.as_ref())
            .and_then(|name| parts.headers.get(name))
            .and_then(|v| v.to_str().ok())
        {
            authority = Some(host.to_owned());
        }
        headers::strip_hop_by_hop(&mut parts.headers);
        let h = &mut parts.headers;
        // `Expect: 100-continue` stays only with `proxy_100_continue`. The downstream's
        // `100 Continue` is sent by pilotfish when it starts reading the body (hyper has
        // no way to relay the upstream's), so the client gets it either way.
        if !self.config.proxy_100_continue
            && h.get(header::EXPECT)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
        {
            h.remove(header::EXPECT);
        }
        if let Some(t) = timeout {
            h.insert(
                headers::X_ENVOY_EXPECTED_RQ_TIMEOUT_MS,
                headers::decimal(t.as_millis() as u64),
            );
        }
        if matched.attempt_count().0 {
            // The first attempt; a retry's is set as it is sent.
            h.insert(headers::X_ENVOY_ATTEMPT_COUNT, headers::decimal(1));
        }
        let levels = || matched.header_levels(true);
        if levels().next().is_some() {
            let ctx = levels().any(|l| l.is_formatted()).then(|| Record {
                start: Some(SystemTime::now()),
                method: Some(parts.method.to_string()),
                path: parts.uri.path_and_query().map(|p| p.to_string()),
                authority: authority.clone(),
                scheme: Some("http"),
                protocol: Some(protocol_name(parts.version)),
                request_headers: Some(h.clone()),
                upstream_cluster: matched.cluster().map(|c| c.name().to_owned()),
                route_name: Some(route.name.clone()),
                downstream_remote: Some(down.peer),
                downstream_local: Some(down.local),
                ..Default::default()
            });
            header_mutation::apply_all(levels(), h, ctx.as_ref());
        }
        let path = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        if h2 {
            h.remove(HOST);
            let mut uri = Uri::builder().scheme(Scheme::HTTP).path_and_query(path);
            if let Some(a) = authority
                .as_deref()
                .and_then(|a| a.parse::<Authority>().ok())
            {
                uri = uri.authority(a);
            } else {
                uri = uri.authority("localhost");
            }
            parts.uri = uri.build().map_err(|_| bad_request())?;
            parts.version = Version::HTTP_2;
        } else {
            // An HTTP/1.1 request usually keeps the `host` it came with.
            if let Some(a) = &authority
                && h.get(HOST).is_none_or(|v| v.as_bytes() != a.as_bytes())
            {
                h.insert(HOST, HeaderValue::from_str(a).map_err(|_| bad_request())?);
            }
            parts.uri = Uri::from(path);
            parts.version = Version::HTTP_11;
        }
        Ok(Request::from_parts(parts, body))
    }
}

fn bad_request() -> Response<Body> {
    let mut r = Response::new(body::empty());
    *r.status_mut() = http::StatusCode::BAD_REQUEST;
    r
}

/// `:authority` for HTTP/2, `Host` for HTTP/1.
fn request_authority<B>(req: &Request<B>) -> Option<String> {
    if let Some(a) = req.uri().authority() {
        return Some(a.as_str().to_owned());
    }
    req.headers()
        .get(HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

fn protocol_name(v: Version) -> &'static str {
    match v {
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/1.1",
    }
}

/// Counts request body bytes for `%BYTES_RECEIVED%`.
struct ByteCount(Arc<AtomicU64>);

impl Observer for ByteCount {
    fn data(&mut self, bytes: usize) {
        self.0.fetch_add(bytes as u64, Ordering::Relaxed);
    }
}

/// An attempt in flight: counted in the cluster's `upstream_rq_active` and its host's
/// active requests (least request reads them) until its response ends.
type Attempt = (GaugeGuard, crate::upstream::host::InFlight);

/// Rides on the response body; when the response is done (or abandoned), records the
/// request's time and releases the active-request gauge.
struct RequestTimer {
    _active: GaugeGuard,
    started: Instant,
    hcm: Arc<HttpConnectionManager>,
}

impl Observer for RequestTimer {}

impl RequestTimer {
    /// The response, its body carrying the timer to the end of the request.
    fn rides_on(self, resp: Response<Body>) -> Response<Body> {
        let (parts, b) = resp.into_parts();
        Response::from_parts(parts, body::boxed(Guarded::new(b, self, None)))
    }
}

impl Drop for RequestTimer {
    fn drop(&mut self) {
        self.hcm
            .stats
            .downstream_rq_time
            .record(self.started.elapsed());
    }
}

/// A [`RequestTimer`] that also writes the access log lines and records Istio's stats.
struct RequestEnd {
    timer: RequestTimer,
    record: Record,
    received: Arc<AtomicU64>,
    sent: u64,
    istio: Option<IstioEnd>,
    trace: Option<TraceEnd>,
}

/// What a sampled request's span needs at its end.
struct TraceEnd {
    span: RequestSpan,
    /// The cluster's name and observability name.
    cluster: Option<(String, String)>,
    metadata: DynamicMetadata,
    grpc: bool,
    grpc_status: Option<u32>,
    grpc_message: Option<String>,
}

impl Observer for RequestEnd {
    fn data(&mut self, bytes: usize) {
        self.sent += bytes as u64;
    }

    fn trailers(&mut self, trailers: &http::HeaderMap) {
        if let Some(s) = grpc_status_of(trailers) {
            self.record.grpc_status = Some(s);
        }
        if let Some(i) = &mut self.istio
            && let Some(s) = grpc_status_of(trailers)
        {
            i.grpc_status = Some(s);
        }
        if let Some(t) = &mut self.trace
            && t.grpc
        {
            if let Some(s) = grpc_status_of(trailers) {
                t.grpc_status = Some(s);
            }
            if let Some(m) = trailers.get("grpc-message").and_then(|v| v.to_str().ok()) {
                t.grpc_message = Some(m.to_owned());
            }
        }
    }
}

impl Drop for RequestEnd {
    fn drop(&mut self) {
        self.record.bytes_sent = self.sent;
        self.record.bytes_received = self.received.load(Ordering::Relaxed);
        self.record.duration = self.timer.started.elapsed();
        let hcm = &self.timer.hcm;
        for log in hcm.access_logs.iter() {
            log.write(&self.record);
        }
        if let Some(i) = &self.istio
            && let Some(stats) = &hcm.istio_stats
        {
            i.record(stats, &self.record);
        }
        if let Some(t) = self.trace.take() {
            let r = &self.record;
            t.span.finish(&SpanOutcome {
                status: r.response_code,
                flags: r.response_flags.as_deref().unwrap_or("-"),
                received: r.bytes_received,
                sent: r.bytes_sent,
                cluster: t.cluster.as_ref().map(|(n, o)| (n.as_str(), o.as_str())),
                request_headers: r.request_headers.as_ref(),
                grpc: t.grpc.then_some(GrpcEnd {
                    status: t.grpc_status,
                    message: t.grpc_message.as_deref(),
                }),
                metadata: Some(&t.metadata),
                record: Some(r),
            });
        }
    }
}

/// What Istio's stats need of a stream beyond the access log's record.
struct IstioEnd {
    /// The other workload, from its peer metadata header.
    peer: Option<Arc<crate::istio::peer::Peer>>,
    peer_principal: Option<String>,
    local_principal: Option<String>,
    /// `Host` / `:authority` (Istio's destination service fallback).
    host: Option<String>,
    service: Option<Arc<crate::istio::stats::labels::Service>>,
    grpc: bool,
    grpc_status: Option<u32>,
    /// The request's and the response's head as HTTP/1.1 text: with the bodies,
    /// what Istio's byte histograms measure (wire bytes).
    request_head: u64,
    response_head: u64,
    messages: Option<Arc<grpc_stats::Call>>,
    /// A gRPC call's periodic message reports, and what stops them.
    grpc_reports: Option<(
        Arc<crate::istio::stats::GrpcReport>,
        tokio::task::AbortHandle,
    )>,
}

impl Drop for IstioEnd {
    fn drop(&mut self) {
        if let Some((_, ticker)) = &self.grpc_reports {
            ticker.abort();
        }
    }
}

impl IstioEnd {
    fn new<B>(req: &Request<B>, tls: Option<&crate::tls::PeerInfo>, grpc: bool) -> Self {
        let target = req.uri().path_and_query().map_or(1, |p| p.as_str().len());
        IstioEnd {
            peer: None,
            peer_principal: tls.and_then(|t| t.uri_san.clone()),
            local_principal: tls.and_then(|t| t.local_uri_san()),
            host: request_authority(req),
            service: None,
            grpc,
            grpc_status: None,
            request_head: (req.method().as_str().len() + target + 12) as u64
                + head_len(req.headers()),
            response_head: 0,
            messages: None,
            grpc_reports: None,
        }
    }

    /// For a gRPC call the grpc_stats filter counts, with a reporting period: its
    /// message counters are reported every period until it ends (as istio-proxy's).
    fn start_grpc_reports(&mut self, stats: &crate::istio::stats::IstioStats, r: &Record) {
        let (Some(call), Some(period)) = (self.messages.clone(), stats.tcp_reporting()) else {
            return;
        };
        let report = Arc::new(self.labelled(stats, r, |f, a| stats.grpc_report(f, a)));
        let ticking = report.clone();
        let ticker = tokio::spawn(async move {
            let mut next = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
            loop {
                next.tick().await;
                ticking.report(call.messages());
            }
        });
        self.grpc_reports = Some((report, ticker.abort_handle()));
    }

    fn on_response<B>(&mut self, resp: &Response<B>) {
        self.response_head = 17 + head_len(resp.headers());
        if self.grpc {
            self.grpc_status = grpc_status_of(resp.headers());
        }
    }

    /// Calls `f` with the stream's label facts and expression attributes.
    fn labelled<T>(
        &self,
        stats: &crate::istio::stats::IstioStats,
        r: &Record,
        f: impl FnOnce(&crate::istio::stats::labels::Facts, &crate::istio::stats::attrs::Attrs) -> T,
    ) -> T {
        use crate::istio::stats::{attrs::Attrs, labels};
        let code = r.response_code;
        let facts = labels::Facts {
            reporter: stats.reporter(),
            peer: self.peer.as_deref(),
            peer_principal: self.peer_principal.as_deref(),
            local_principal: self.local_principal.as_deref(),
            host: self.host.as_deref(),
            route_name: r.route_name.as_deref(),
            cluster_name: r.upstream_cluster.as_deref(),
            service: self.service.as_deref(),
            protocol: if self.grpc { "grpc" } else { "http" },
            response_code: code,
            grpc_status: if self.grpc {
                labels::grpc_status(self.grpc_status, code)
            } else {
                None
            },
            response_flags: r.response_flags.as_deref().unwrap_or("-"),
        };
        let (downstream_peer, upstream_peer) = match facts.reporter {
            labels::Reporter::Destination => (self.peer.as_deref(), None),
            labels::Reporter::Source => (None, self.peer.as_deref()),
        };
        let attrs = Attrs {
            response_code: Some(code),
            mtls: self.peer_principal.is_some(),
            peer_principal: self.peer_principal.as_deref(),
            local_principal: self.local_principal.as_deref(),
            downstream_peer,
            upstream_peer,
            local: None,
            ..Attrs::of_record(r)
        };
        f(&facts, &attrs)
    }

    fn record(&self, stats: &crate::istio::stats::IstioStats, r: &Record) {
        use crate::istio::stats::HttpEnd;
        let mut end = HttpEnd {
            duration_ms: r.duration.as_millis() as u64,
            request_bytes: self.request_head + r.bytes_received,
            response_bytes: self.response_head + r.bytes_sent,
            messages: self.messages.as_ref().map(|c| c.messages()),
        };
        // Messages already reported periodically: the rest goes there.
        if let (Some((report, _)), Some(totals)) = (&self.grpc_reports, end.messages.take()) {
            report.report(totals);
        }
        self.labelled(stats, r, |facts, attrs| {
            stats.record_http(facts, attrs, &end)
        });
    }
}

/// The size of a header block as HTTP/1.1 text (`name: value\r\n` each, and the blank
/// line).
fn head_len(h: &http::HeaderMap) -> u64 {
    h.iter()
        .map(|(k, v)| (k.as_str().len() + v.len() + 4) as u64)
        .sum::<u64>()
        + 2
}

fn grpc_status_of(h: &http::HeaderMap) -> Option<u32> {
    h.get("grpc-status")?.to_str().ok()?.parse().ok()
}

/// The retry policy of a route without one, for an internal request whose headers ask
/// for retries (`x-envoy-retry-on` …): Envoy's defaults.
static DEFAULT_RETRY: std::sync::LazyLock<crate::http::retry::RetryPolicy> =
    std::sync::LazyLock::new(Default::default);

/// Envoy's control headers the router reads from an internal request and removes.
const ROUTER_HEADERS: [&str; 8] = [
    "x-envoy-retry-on",
    "x-envoy-retry-grpc-on",
    "x-envoy-max-retries",
    "x-envoy-retriable-status-codes",
    "x-envoy-retriable-header-names",
    "x-envoy-upstream-rq-timeout-ms",
    "x-envoy-upstream-rq-per-try-timeout-ms",
    "x-envoy-hedge-on-per-try-timeout",
];

/// What ended the wait for an attempt's response headers. Short-lived, on the stack:
/// boxing the response would cost an allocation per request.
#[allow(clippy::large_enum_variant)]
enum Outcome {
    Sent(Result<Response<PooledBody>, SendError>),
    /// The route's `timeout` (it spans every attempt).
    RouteTimeout,
    /// The retry policy's `per_try_timeout`.
    PerTryTimeout,
    /// The retry policy's `per_try_idle_timeout`.
    PerTryIdle,
    /// The route's `idle_timeout`.
    StreamIdle,
    /// The stream's `max_stream_duration`.
    MaxDuration,
    /// The connection manager's `request_timeout`, the request still arriving.
    RequestTimeout,
}

/// A stream's limits that are not about the upstream: when it must end, and when its
/// request must have arrived whole.
struct StreamLimits {
    end: Option<tokio::time::Instant>,
    request: Option<(tokio::time::Instant, RequestDone)>,
    down_h2: bool,
}

impl StreamLimits {
    /// Resolves when a limit passes.
    async fn reached(&self) -> Outcome {
        let end = async {
            match self.end {
                Some(e) => tokio::time::sleep_until(e).await,
                None => std::future::pending().await,
            }
        };
        let request = async {
            match &self.request {
                Some((t, done)) => {
                    tokio::time::sleep_until(*t).await;
                    if done.0.load(Ordering::Relaxed) {
                        std::future::pending::<()>().await;
                    }
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = end => Outcome::MaxDuration,
            () = request => Outcome::RequestTimeout,
        }
    }
}

/// Set once the downstream request body has ended (or been dropped).
#[derive(Clone, Default)]
struct RequestDone(Arc<std::sync::atomic::AtomicBool>);

impl Observer for RequestDone {}

impl Drop for RequestDone {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// What hedged attempts share.
/// Where the router counts a request's outcome: the cluster's stats, and the virtual
/// cluster's when the request is in one.
#[derive(Clone, Copy)]
struct Charge<'a> {
    cluster: &'a ClusterStats,
    vcluster: Option<&'a VclusterStats>,
}

impl Charge<'_> {
    /// The response (or local reply) that ends the request.
    fn code(&self, code: u16) {
        self.cluster.upstream_rq.record(code);
        if let Some(v) = self.vcluster {
            v.upstream_rq.record_completed(code);
        }
    }

    /// The route's timeout ended the request (504).
    fn timeout(&self) {
        self.cluster.upstream_rq_timeout.inc();
        if let Some(v) = self.vcluster {
            v.upstream_rq_timeout.inc();
        }
        self.code(504);
    }

    /// Has an attempt count in the virtual cluster's `upstream_rq_total` too, when the
    /// pool counts it in the cluster's (once it has a connection).
    fn mark<B>(&self, req: &mut Request<B>) {
        if let Some(v) = self.vcluster {
            req.extensions_mut()
                .insert(http_pool::AlsoCount(v.upstream_rq_total.clone()));
        }
    }
}

/// Marks a response that came from upstream (`%RESPONSE_CODE_DETAILS%`: `via_upstream`).
#[derive(Clone, Copy)]
struct ViaUpstream;

/// Records `upstream_rq_time` (cluster and virtual cluster) when the response ends.
struct RqTime {
    cluster: Arc<Cluster>,
    vcluster: Option<Arc<VclusterStats>>,
    start: tokio::time::Instant,
}

impl Observer for RqTime {}

impl Drop for RqTime {
    fn drop(&mut self) {
        let took = self.start.elapsed();
        self.cluster.stats.upstream_rq_time.record(took);
        if let Some(v) = &self.vcluster {
            v.upstream_rq_time.record(took);
        }
    }
}

struct Hedging<'a> {
    cluster: &'a Arc<Cluster>,
    resend: &'a Resend,
    idle: Option<&'a Activity>,
    h2: bool,
    /// The `istio.alpn` override the attempts carry.
    alpn: Option<&'a crate::istio::alpn::Override>,
    dst: SocketAddr,
    /// The request's hash for a hashing balancer.
    hash: Option<u64>,
    count_header: bool,
    limits: &'a StreamLimits,
    charge: Charge<'a>,
}

/// A request kept to be sent again: its head, and its body made replayable (none for
/// a request without a body).
struct Resend {
    method: http::Method,
    uri: Uri,
    version: Version,
    headers: http::HeaderMap,
    body: Option<Replay>,
}

impl Resend {
    fn new(req: Request<Body>, limit: usize, abandoned: &crate::telemetry::stats::Counter) -> Self {
        let (parts, b) = req.into_parts();
        let body = (!hyper::body::Body::is_end_stream(&b))
            .then(|| Replay::new(b, limit, abandoned.clone()));
        Resend {
            method: parts.method,
            uri: parts.uri,
            version: parts.version,
            headers: parts.headers,
            body,
        }
    }

    fn replayable(&self) -> bool {
        self.body.as_ref().is_none_or(Replay::replayable)
    }

    /// Reads the body on between attempts; returns if it passes the buffer limit.
    async fn read_ahead(&self) {
        match &self.body {
            Some(b) => b.read_ahead().await,
            None => std::future::pending().await,
        }
    }

    /// The request for a mirror.
    fn copy(
        &self,
        timeout: Option<std::time::Duration>,
        dst: SocketAddr,
        limit: usize,
    ) -> mirror::Copy {
        let authority = self
            .uri
            .authority()
            .map(|a| a.as_str().to_owned())
            .or_else(|| {
                self.headers
                    .get(HOST)
                    .and_then(|h| h.to_str().ok())
                    .map(str::to_owned)
            })
            .unwrap_or_default();
        mirror::Copy {
            method: self.method.clone(),
            path: self
                .uri
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/")),
            authority,
            headers: self.headers.clone(),
            body: self.body.as_ref().and_then(|b| b.tap(limit)),
            timeout,
            dst,
        }
    }

    /// The request for attempt number `attempt` (1 is the first); a retry tells the
    /// upstream the time `expected` it has left.
    fn request(
        &self,
        attempt: u32,
        count_header: bool,
        expected: Option<std::time::Duration>,
    ) -> Request<Body> {
        let body = match &self.body {
            Some(r) => body::boxed(r.attempt()),
            None => body::empty(),
        };
        let mut req = Request::new(body);
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.version_mut() = self.version;
        *req.headers_mut() = self.headers.clone();
        if count_header {
            req.headers_mut().insert(
                headers::X_ENVOY_ATTEMPT_COUNT,
                headers::decimal(u64::from(attempt)),
            );
        }
        if let Some(t) = expected.filter(|_| attempt > 1) {
            req.headers_mut().insert(
                headers::X_ENVOY_EXPECTED_RQ_TIMEOUT_MS,
                headers::decimal(t.as_millis() as u64),
            );
        }
        req
    }
}

/// Tells the cluster's outlier detection how an attempt went: its status, or a local
/// failure (Envoy reports a reset as a failed connection too). An overflow says
/// nothing of the host.
fn report_outlier(
    cluster: &Cluster,
    host: &Arc<Host>,
    r: &Result<Response<PooledBody>, SendError>,
) {
    use std::sync::atomic::Ordering::Relaxed;
    let c = &host.counters;
    match r {
        Ok(resp) => {
            c.rq_total.fetch_add(1, Relaxed);
            if resp.status().is_server_error() {
                c.rq_error.fetch_add(1, Relaxed);
            } else {
                c.rq_success.fetch_add(1, Relaxed);
            }
        }
        Err(SendError::Reset(_)) => {
            c.rq_total.fetch_add(1, Relaxed);
            c.rq_error.fetch_add(1, Relaxed);
        }
        Err(_) => {}
    }
    if cluster.outlier.is_none() {
        return;
    }
    match r {
        Ok(resp) => {
            cluster.report(host, HostResult::Connected);
            cluster.report(host, HostResult::Http(resp.status().as_u16()));
        }
        Err(SendError::Connect(_) | SendError::Reset(_)) => {
            cluster.report(host, HostResult::ConnectFailed)
        }
        Err(SendError::Overflow) => {}
    }
}

/// The host for a retry: with `previous_hosts`, picks again (up to
/// `host_selection_retry_max_attempts` times) while the pick was tried before, then
/// takes the last pick, as Envoy's load balancers do.
/// With a request hash, each new pick alters the hash (Envoy's Maglev way) so that it
/// can land elsewhere.
fn retry_host(
    cluster: &Cluster,
    rs: &mut RetryState<'_>,
    dst: SocketAddr,
    hash: Option<u64>,
) -> Option<Arc<Host>> {
    let tried = std::mem::take(&mut rs.tried_priorities);
    let excluded = rs.excluded_priorities(&tried).map(<[bool]>::to_vec);
    rs.tried_priorities = tried;
    let excluded = excluded.unwrap_or_default();
    let mut host = cluster.pick_excluding(Some(dst), hash, &excluded)?;
    for attempt in 1..=rs.policy().host_selection_max_attempts {
        if !rs.rejects(&host) {
            break;
        }
        let hash = hash.map(|h| h ^ (u64::MAX - u64::from(attempt) + 1));
        host = cluster.pick_excluding(Some(dst), hash, &excluded)?;
    }
    Some(host)
}

/// An attempt's status (none without an upstream response) and response flags, for
/// its span.
fn attempt_result(
    outcome: &Result<Response<PooledBody>, (Failure, Response<Body>)>,
) -> (Option<u16>, &'static str) {
    match outcome {
        Ok(r) => (Some(r.status().as_u16()), "-"),
        Err((_, reply)) => (
            None,
            reply
                .extensions()
                .get::<ResponseFlag>()
                .map_or("-", |f| f.as_str()),
        ),
    }
}

/// An attempt's answer, or how it failed with the local reply that says so. After a
/// retry, Envoy's reset replies say so.
#[allow(clippy::result_large_err)]
fn sent_outcome(
    r: Result<Response<PooledBody>, SendError>,
    retried: bool,
    cluster: &str,
) -> Result<Response<PooledBody>, (Failure, Response<Body>)> {
    let reset_reply = |fresh: &'static str, again: &'static str, flag| {
        local_reply::with_body(
            http::StatusCode::SERVICE_UNAVAILABLE,
            if retried { again } else { fresh },
            flag,
        )
    };
    match r {
        Ok(resp) => Ok(resp),
        Err(SendError::Overflow) => {
            let mut reply = local_reply::with_body(
                http::StatusCode::SERVICE_UNAVAILABLE,
                local_reply::OVERFLOW,
                ResponseFlag::UpstreamOverflow,
            );
            reply.headers_mut().insert(
                headers::X_ENVOY_OVERLOADED,
                HeaderValue::from_static("true"),
            );
            Err((Failure::Overflow, reply))
        }
        Err(SendError::Connect(ConnectError::Timeout)) => Err((
            Failure::ConnectFailure,
            reset_reply(
                local_reply::CONNECT_TIMEOUT,
                local_reply::RETRIED_CONNECT_TIMEOUT,
                ResponseFlag::UpstreamConnectionFailure,
            ),
        )),
        Err(SendError::Connect(
            e @ (ConnectError::Failed(_) | ConnectError::Loop | ConnectError::Tls(_)),
        )) => {
            let mut reply = reset_reply(
                local_reply::CONNECT_FAILURE,
                local_reply::RETRIED_CONNECT_FAILURE,
                ResponseFlag::UpstreamConnectionFailure,
            );
            if let Some(reason) = e.transport_failure_reason() {
                reply
                    .extensions_mut()
                    .insert(local_reply::TransportFailure(reason));
            }
            Err((Failure::ConnectFailure, reply))
        }
        Err(SendError::Reset(e)) => {
            tracing::debug!(cluster, "upstream reset before headers: {e}");
            let refused = refused_stream(&e);
            let reply = if refused {
                reset_reply(
                    local_reply::REFUSED_STREAM,
                    local_reply::RETRIED_REFUSED_STREAM,
                    ResponseFlag::UpstreamRemoteReset,
                )
            } else {
                reset_reply(
                    local_reply::CONNECTION_TERMINATION,
                    local_reply::RETRIED_CONNECTION_TERMINATION,
                    ResponseFlag::UpstreamConnectionTermination,
                )
            };
            Err((Failure::Reset { refused }, reply))
        }
    }
}

/// Whether an HTTP/2 upstream refused the stream (`REFUSED_STREAM`).
fn refused_stream(e: &hyper::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(h2) = s.downcast_ref::<h2::Error>() {
            return h2.reason() == Some(h2::Reason::REFUSED_STREAM);
        }
        source = s.source();
    }
    false
}

/// The destination an ORIGINAL_DST cluster connects to: the request header's `ip:port`
/// when the cluster uses one and it parses, else the connection's original destination.
fn original_dst(
    cluster: &crate::config::ClusterConfig,
    req: &Request<Body>,
    local: std::net::SocketAddr,
) -> std::net::SocketAddr {
    cluster
        .original_dst_header
        .as_ref()
        .and_then(|h| req.headers().get(h)?.to_str().ok()?.parse().ok())
        .unwrap_or(local)
}
