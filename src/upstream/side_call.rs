//! One request pilotfish makes for itself (an authorization check, a span export)
//! through one of its clusters: the cluster's balancer picks the host, its pool
//! carries the request, its stats count it.
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Request, header};
use http_body_util::BodyExt;

use super::{http_pool, manager::ClusterMap};
use crate::http::body::Body;

/// Why a call got no response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallError {
    /// No such cluster.
    NoCluster,
    /// No host, a connect failure, a reset or the timeout.
    Failed,
}

/// Sends `req` to `cluster` (over HTTP/2 when `h2`) and reads the whole response
/// within `timeout`: its head, body and trailers.
pub async fn call(
    clusters: &ClusterMap,
    cluster: &str,
    req: Request<Body>,
    h2: bool,
    timeout: Duration,
) -> Result<(http::response::Parts, Bytes, Option<HeaderMap>), CallError> {
    let cluster = clusters.get(cluster).ok_or(CallError::NoCluster)?;
    let host = cluster.pick(None).ok_or(CallError::Failed)?;
    let req = if h2 { req } else { origin_form(req) };
    let call = async {
        let resp = http_pool::send(cluster, &host, req, h2).await.ok()?;
        let (parts, body) = resp.into_parts();
        let collected = body.collect().await.ok()?;
        let trailers = collected.trailers().cloned();
        Some((parts, collected.to_bytes(), trailers))
    };
    let out = tokio::time::timeout(timeout, call).await.ok().flatten();
    if let Some((parts, _, _)) = &out {
        cluster.stats.upstream_rq.record(parts.status.as_u16());
    }
    out.ok_or(CallError::Failed)
}

/// HTTP/1 requests go out in origin form (`POST /path`) with the authority in `Host`.
fn origin_form(mut req: Request<Body>) -> Request<Body> {
    if let Some(a) = req.uri().authority().cloned() {
        if !req.headers().contains_key(http::header::HOST)
            && let Ok(v) = http::HeaderValue::from_str(a.as_str())
        {
            req.headers_mut().insert(http::header::HOST, v);
        }
        let path = req
            .uri()
            .path_and_query()
            .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned());
        if let Ok(u) = path.parse() {
            *req.uri_mut() = u;
        }
    }
    req
}

/// A unary gRPC call of `method` (`/package.Service/Method`) with `msg`, through
/// `cluster` over HTTP/2: true when it answered `grpc-status: 0`.
#[allow(clippy::too_many_arguments)]
pub async fn grpc_unary(
    clusters: &ClusterMap,
    cluster: &str,
    authority: &str,
    method: &str,
    msg: &impl prost::Message,
    timeout: Duration,
    metadata: &[(HeaderName, HeaderValue)],
    user_agent: Option<&str>,
) -> Result<bool, CallError> {
    let mut frame = BytesMut::with_capacity(msg.encoded_len() + 5);
    frame.put_u8(0);
    frame.put_u32(msg.encoded_len() as u32);
    msg.encode(&mut frame).map_err(|_| CallError::Failed)?;
    let mut b = Request::post(format!("http://{authority}{method}"))
        .header(header::CONTENT_TYPE, "application/grpc")
        .header(header::TE, "trailers")
        .header("grpc-timeout", format!("{}m", timeout.as_millis()));
    if let Some(ua) = user_agent {
        b = b.header(header::USER_AGENT, ua);
    }
    for (k, v) in metadata {
        b = b.header(k, v);
    }
    let req = b
        .body(crate::http::body::full(frame.freeze()))
        .map_err(|_| CallError::Failed)?;
    let (head, _, trailers) = call(clusters, cluster, req, true, timeout).await?;
    let status = trailers
        .as_ref()
        .or(Some(&head.headers))
        .and_then(|t| t.get("grpc-status"));
    Ok(head.status.is_success() && status.is_some_and(|s| s == "0"))
}
