//! Envoy's local replies: the status, body and response flag Envoy uses when it answers
//! a request itself.
use http::{HeaderValue, Response, StatusCode, header};

use super::body::{self, Body};

/// Envoy's response flags (as `%RESPONSE_FLAGS%` prints them), kept on the response for
/// the access log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseFlag {
    /// No route configured for the request.
    NoRouteFound,
    /// No healthy upstream host.
    NoHealthyUpstream,
    /// Upstream connection failure.
    UpstreamConnectionFailure,
    /// Upstream connection terminated before response headers.
    UpstreamConnectionTermination,
    /// Upstream request timeout.
    UpstreamRequestTimeout,
    /// Upstream reset mid-response, or the downstream went away.
    UpstreamRemoteReset,
    /// Aborted by the fault filter.
    FaultInjected,
    /// The route's `cluster_header` named no known cluster.
    NoClusterFound,
    /// The route's `idle_timeout` passed without activity.
    StreamIdleTimeout,
    /// Refused by the RBAC filter.
    RbacAccessDenied,
    /// Refused by the ext_authz filter (or its service failed).
    UnauthorizedExternalService,
    /// The stream's `max_stream_duration` passed before response headers.
    MaxDurationReached,
    /// The connection manager's `request_timeout` passed before the request was whole.
    RequestTimeout,
    /// A circuit breaker of the cluster was open.
    UpstreamOverflow,
    /// The request body passed the buffer limit while a retry waited for it.
    RetryBufferExceeded,
    /// The downstream request broke HTTP (Envoy's codec errors).
    DownstreamProtocolError,
    /// A local reply Envoy sets no flag for (e.g. a missing `Host`).
    NoFlag,
}

impl ResponseFlag {
    pub fn as_str(self) -> &'static str {
        match self {
            ResponseFlag::NoRouteFound => "NR",
            ResponseFlag::NoHealthyUpstream => "UH",
            ResponseFlag::UpstreamConnectionFailure => "UF",
            ResponseFlag::UpstreamConnectionTermination => "UC",
            ResponseFlag::UpstreamRequestTimeout => "UT",
            ResponseFlag::UpstreamRemoteReset => "UR",
            ResponseFlag::FaultInjected => "FI",
            ResponseFlag::NoClusterFound => "NC",
            ResponseFlag::StreamIdleTimeout => "SI",
            ResponseFlag::UpstreamOverflow => "UO",
            // Envoy has no flag for it; access logs print `-`.
            ResponseFlag::RbacAccessDenied => "-",
            ResponseFlag::UnauthorizedExternalService => "UAEX",
            // Envoy 1.40 sets no flag for either (only response code details).
            ResponseFlag::DownstreamProtocolError => "DPE",
            ResponseFlag::MaxDurationReached
            | ResponseFlag::RequestTimeout
            | ResponseFlag::RetryBufferExceeded
            | ResponseFlag::NoFlag => "-",
        }
    }
}

/// Every response flag Envoy 1.40 names (what an access-log `response_flag_filter`
/// may list), whether or not pilotfish ever sets it.
pub const FLAG_NAMES: &[&str] = &[
    "LH", "UH", "UT", "LR", "UR", "UF", "UC", "UO", "NR", "DI", "FI", "RL", "UAEX", "RLSE", "DC",
    "URX", "SI", "IH", "DPE", "UMSDR", "RFCF", "NFCF", "DT", "UPE", "NC", "OM", "DF", "DO", "DR",
    "UDO",
];

/// The retry flags of a response (upstream or local): `URX` when retries ran out on a
/// retriable outcome, `UO` when the retry breaker refused one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetryFlags {
    pub limit_exceeded: bool,
    pub overflow: bool,
}

impl RetryFlags {
    /// Notes the flags on the response, for the access log.
    pub fn mark<B>(self, resp: &mut Response<B>) {
        if self != RetryFlags::default() {
            resp.extensions_mut().insert(self);
        }
    }
}

/// `%RESPONSE_FLAGS%` as Envoy 1.40 prints them: in the order they were set. The
/// fault filter's `DI` comes first, then the router's retry verdict (`UO`, `URX`),
/// then the flag of the local reply that ended the request.
pub fn flags_text(flag: Option<ResponseFlag>, delayed: bool, retry: RetryFlags) -> Option<String> {
    let primary = flag.map(ResponseFlag::as_str).filter(|f| *f != "-");
    let set: Vec<&str> = [
        delayed.then_some("DI"),
        retry.overflow.then_some("UO"),
        retry.limit_exceeded.then_some("URX"),
        primary,
    ]
    .into_iter()
    .flatten()
    .collect();
    (!set.is_empty()).then(|| set.join(","))
}

/// Why the upstream connection failed, as Envoy's `%UPSTREAM_TRANSPORT_FAILURE_REASON%`
/// says it (a connect error, or the TLS error), carried on the local reply.
#[derive(Debug, Clone)]
pub struct TransportFailure(pub String);

pub const CONNECT_FAILURE: &str = "upstream connect error or disconnect/reset before headers. reset reason: remote connection failure";
pub const CONNECT_TIMEOUT: &str =
    "upstream connect error or disconnect/reset before headers. reset reason: connection timeout";
pub const CONNECTION_TERMINATION: &str = "upstream connect error or disconnect/reset before headers. reset reason: connection termination";

pub const OVERFLOW: &str =
    "upstream connect error or disconnect/reset before headers. reset reason: overflow";

pub const REFUSED_STREAM: &str = "upstream connect error or disconnect/reset before headers. reset reason: remote refused stream reset";

/// The same replies after retries, as Envoy words them.
pub const RETRIED_CONNECT_FAILURE: &str = "upstream connect error or disconnect/reset before headers. retried and the latest reset reason: remote connection failure";
pub const RETRIED_CONNECT_TIMEOUT: &str = "upstream connect error or disconnect/reset before headers. retried and the latest reset reason: connection timeout";
pub const RETRIED_CONNECTION_TERMINATION: &str = "upstream connect error or disconnect/reset before headers. retried and the latest reset reason: connection termination";

pub const RETRIED_REFUSED_STREAM: &str = "upstream connect error or disconnect/reset before headers. retried and the latest reset reason: remote refused stream reset";

pub const FAULT_ABORT: &str = "fault filter abort";

/// The text of a local reply, kept for its gRPC form (`grpc-message`).
#[derive(Debug, Clone, Copy)]
pub struct Text(pub &'static str);

/// A `grpc-status` a local reply carries when the request is gRPC (the fault filter's
/// `grpc_status` abort); otherwise it is derived from the HTTP status.
#[derive(Debug, Clone, Copy)]
pub struct GrpcStatus(pub u32);

/// A reply pilotfish sends itself, with the flag that explains it.
impl ResponseFlag {
    /// Envoy's `%RESPONSE_CODE_DETAILS%` for a local reply with this flag, where
    /// Envoy's is one fixed string.
    pub fn details(self) -> Option<&'static str> {
        Some(match self {
            ResponseFlag::NoRouteFound => "route_not_found",
            ResponseFlag::NoHealthyUpstream => "no_healthy_upstream",
            ResponseFlag::NoClusterFound => "cluster_not_found",
            // The route's timeout (a per-try timeout carries its own details).
            ResponseFlag::UpstreamRequestTimeout => "response_timeout",
            ResponseFlag::FaultInjected => "fault_filter_abort",
            _ => return None,
        })
    }
}

pub fn reply(flag: ResponseFlag) -> Response<Body> {
    let (status, text) = match flag {
        ResponseFlag::NoRouteFound => (StatusCode::NOT_FOUND, ""),
        ResponseFlag::NoHealthyUpstream => (StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream"),
        ResponseFlag::UpstreamConnectionFailure => {
            (StatusCode::SERVICE_UNAVAILABLE, CONNECT_FAILURE)
        }
        ResponseFlag::UpstreamConnectionTermination => {
            (StatusCode::SERVICE_UNAVAILABLE, CONNECTION_TERMINATION)
        }
        ResponseFlag::UpstreamRequestTimeout => {
            (StatusCode::GATEWAY_TIMEOUT, "upstream request timeout")
        }
        ResponseFlag::UpstreamRemoteReset => {
            (StatusCode::SERVICE_UNAVAILABLE, CONNECTION_TERMINATION)
        }
        ResponseFlag::FaultInjected => (StatusCode::SERVICE_UNAVAILABLE, FAULT_ABORT),
        ResponseFlag::NoClusterFound => (StatusCode::SERVICE_UNAVAILABLE, ""),
        ResponseFlag::UpstreamOverflow => (StatusCode::SERVICE_UNAVAILABLE, OVERFLOW),
        // 504 once the request is upstream (408 is for a request still arriving).
        ResponseFlag::StreamIdleTimeout => (StatusCode::GATEWAY_TIMEOUT, "stream timeout"),
        ResponseFlag::RbacAccessDenied => (StatusCode::FORBIDDEN, "RBAC: access denied"),
        ResponseFlag::UnauthorizedExternalService => (StatusCode::FORBIDDEN, ""),
        ResponseFlag::MaxDurationReached => {
            (StatusCode::GATEWAY_TIMEOUT, "downstream duration timeout")
        }
        ResponseFlag::RequestTimeout => (StatusCode::REQUEST_TIMEOUT, "request timeout"),
        ResponseFlag::RetryBufferExceeded => (
            StatusCode::INSUFFICIENT_STORAGE,
            "exceeded request buffer limit while retrying upstream",
        ),
        ResponseFlag::DownstreamProtocolError => (StatusCode::BAD_REQUEST, "Bad Request"),
        ResponseFlag::NoFlag => (StatusCode::BAD_REQUEST, ""),
    };
    with_body(status, text, flag)
}

/// A local reply with an explicit body (e.g. a connect timeout's reset reason).
pub fn with_body(status: StatusCode, text: &'static str, flag: ResponseFlag) -> Response<Body> {
    let mut resp = Response::new(if text.is_empty() {
        body::empty()
    } else {
        body::full(text)
    });
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(text.len()));
    if !text.is_empty() {
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    }
    resp.extensions_mut().insert(flag);
    resp.extensions_mut().insert(Text(text));
    resp
}

/// Turns a local reply to a gRPC request into gRPC's trailers-only form, as Envoy does:
/// `:status 200`, `content-type: application/grpc`, `grpc-status` (the explicit one, or
/// Envoy's mapping of the HTTP status) and `grpc-message` (the reply's text), no body.
/// Replies that are not local (no [`Text`]) are left alone.
pub fn to_grpc(resp: &mut Response<Body>) {
    let Some(Text(text)) = resp.extensions().get::<Text>().copied() else {
        return;
    };
    let status = match resp.extensions().get::<GrpcStatus>() {
        Some(GrpcStatus(s)) => *s,
        None => http_to_grpc_status(resp.status().as_u16()),
    };
    *resp.status_mut() = StatusCode::OK;
    *resp.body_mut() = body::empty();
    let h = resp.headers_mut();
    h.remove(header::CONTENT_LENGTH);
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.insert("grpc-status", HeaderValue::from(status));
    if !text.is_empty() {
        h.insert("grpc-message", HeaderValue::from_static(text));
    }
}

/// Envoy's `Grpc::Utility::httpToGrpcStatus`.
fn http_to_grpc_status(status: u16) -> u32 {
    match status {
        400 => 13,                   // INTERNAL
        401 => 16,                   // UNAUTHENTICATED
        403 => 7,                    // PERMISSION_DENIED
        404 => 12,                   // UNIMPLEMENTED
        429 | 502 | 503 | 504 => 14, // UNAVAILABLE
        _ => 2,                      // UNKNOWN
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Envoy 1.40 prints flags in the order they were set (checked in
    /// tests/envoy_retries.rs and tests/envoy_fault.rs).
    #[test]
    fn flags_print_in_the_order_envoy_sets_them() {
        let urx = RetryFlags {
            limit_exceeded: true,
            overflow: false,
        };
        assert_eq!(
            flags_text(Some(ResponseFlag::UpstreamRequestTimeout), false, urx).as_deref(),
            Some("URX,UT")
        );
        assert_eq!(
            flags_text(
                Some(ResponseFlag::FaultInjected),
                true,
                RetryFlags::default()
            )
            .as_deref(),
            Some("DI,FI")
        );
        assert_eq!(flags_text(None, false, urx).as_deref(), Some("URX"));
        assert_eq!(
            flags_text(
                Some(ResponseFlag::RbacAccessDenied),
                false,
                RetryFlags::default()
            ),
            None
        );
    }
}
