//! Request mirroring (`request_mirror_policies`): a copy of the request, body included,
//! goes to another cluster with its authority suffixed `-shadow`, fire and forget. The
//! client gets only the primary's answer. The copy's body streams as the primary reads
//! the request's (as Envoy's shadows do), but never holds it back: a mirror that falls
//! a buffer limit behind is cut off, so a slow, failing or unreachable mirror costs the
//! primary nothing.
use std::{net::SocketAddr, sync::Arc, time::Duration};

use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Uri, Version, header::HOST};
use http_body_util::BodyExt;

use super::{
    body::{self, Body},
    headers,
    retry::replay::Tap,
};
use crate::{
    config::UpstreamProtocol,
    upstream::{cluster::Cluster, http_pool, manager::ClusterMap},
};

/// A compiled `RequestMirrorPolicy`.
#[derive(Debug, Clone)]
pub struct MirrorPolicy {
    pub target: MirrorTarget,
    /// `runtime_fraction.default_value`, per million (default: every request).
    pub per_million: u32,
    /// `disable_shadow_host_suffix_append`: keep the authority as it is.
    pub keep_host: bool,
}

#[derive(Debug, Clone)]
pub enum MirrorTarget {
    Cluster(String),
    /// `cluster_header`: the cluster the request header names (none: no copy).
    Header(HeaderName),
}

impl MirrorPolicy {
    /// The mirror cluster for this request, if its fraction and target pick one.
    pub fn pick(&self, h: &HeaderMap, clusters: &ClusterMap) -> Option<Arc<Cluster>> {
        if self.per_million < 1_000_000 && fastrand::u32(..1_000_000) >= self.per_million {
            return None;
        }
        let name = match &self.target {
            MirrorTarget::Cluster(c) => c.as_str(),
            MirrorTarget::Header(n) => h.get(n)?.to_str().ok()?,
        };
        clusters.get(name).cloned()
    }
}

/// `host` → `host-shadow`, `host:port` → `host-shadow:port`, as Envoy names the copy.
pub fn shadow_authority(authority: &str) -> String {
    // A bracketed IPv6 literal keeps its port after the bracket.
    let split = match authority.rfind(':') {
        Some(i) if !authority[i..].contains(']') => Some(i),
        _ => None,
    };
    match split {
        Some(i) => format!("{}-shadow{}", &authority[..i], &authority[i..]),
        None => format!("{authority}-shadow"),
    }
}

/// What the copy is made of: the request as it went upstream.
pub struct Copy {
    pub method: Method,
    pub path: http::uri::PathAndQuery,
    pub authority: String,
    pub headers: HeaderMap,
    /// The body as the primary reads it; `None` for a request without one.
    pub body: Option<Tap>,
    pub timeout: Option<Duration>,
    pub dst: SocketAddr,
}

/// Sends the copy to `cluster` in the background. It is dropped, and counted in the
/// cluster's `upstream_rq_pending_overflow`, when the cluster already has as many
/// requests active as its `max_requests` threshold allows.
pub fn send(cluster: Arc<Cluster>, copy: Copy, keep_host: bool) {
    let limit = i64::from(cluster.config.breakers.default.max_requests);
    if cluster.stats.upstream_rq_active.get() >= limit {
        cluster.stats.upstream_rq_pending_overflow.inc();
        return;
    }
    tokio::spawn(async move {
        let work = async {
            let Some(host) = cluster.pick(Some(copy.dst)) else {
                cluster.stats.upstream_cx_none_healthy.inc();
                return;
            };
            let authority = if keep_host {
                copy.authority
            } else {
                shadow_authority(&copy.authority)
            };
            let h2 = cluster.config.protocol == UpstreamProtocol::Http2;
            let body = copy.body.map_or_else(body::empty, body::boxed);
            let Some(req) = request(copy.method, copy.path, &authority, copy.headers, h2, body)
            else {
                return;
            };
            let _active = (
                crate::telemetry::stats::GaugeGuard::new(&cluster.stats.upstream_rq_active),
                host.track(),
            );
            match http_pool::send(&cluster, &host, req, h2).await {
                Ok(resp) => {
                    cluster.stats.upstream_rq.record(resp.status().as_u16());
                    // Read and dropped: only the primary's answer goes downstream.
                    let _ = resp.into_body().collect().await;
                    cluster.stats.upstream_rq_completed.inc();
                }
                Err(e) => {
                    tracing::debug!(cluster = cluster.name(), "mirror request failed: {e:?}");
                }
            }
        };
        match copy.timeout {
            Some(t) => {
                if tokio::time::timeout(t, work).await.is_err() {
                    cluster.stats.upstream_rq_timeout.inc();
                }
            }
            None => work.await,
        }
    });
}

fn request(
    method: Method,
    path: http::uri::PathAndQuery,
    authority: &str,
    mut headers: HeaderMap,
    h2: bool,
    body: Body,
) -> Option<Request<Body>> {
    let mut req = Request::new(body);
    *req.method_mut() = method;
    if h2 {
        headers.remove(HOST);
        *req.uri_mut() = Uri::builder()
            .scheme("http")
            .authority(authority)
            .path_and_query(path)
            .build()
            .ok()?;
        *req.version_mut() = Version::HTTP_2;
    } else {
        headers.insert(HOST, HeaderValue::from_str(authority).ok()?);
        *req.uri_mut() = Uri::from(path);
        *req.version_mut() = Version::HTTP_11;
    }
    headers.remove(headers::X_ENVOY_ATTEMPT_COUNT);
    super::forwarded::mark_internal(&mut headers);
    *req.headers_mut() = headers;
    Some(req)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shadow_authority_keeps_the_port() {
        assert_eq!(shadow_authority("reviews"), "reviews-shadow");
        assert_eq!(shadow_authority("reviews:9080"), "reviews-shadow:9080");
        assert_eq!(shadow_authority("[::1]:80"), "[::1]-shadow:80");
        assert_eq!(shadow_authority("[::1]"), "[::1]-shadow");
    }
}
