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
        }
    }
}

pub const CONNECT_FAILURE: &str = "upstream connect error or disconnect/reset before headers. reset reason: remote connection failure";
pub const CONNECT_TIMEOUT: &str =
    "upstream connect error or disconnect/reset before headers. reset reason: connection timeout";
pub const CONNECTION_TERMINATION: &str = "upstream connect error or disconnect/reset before headers. reset reason: connection termination";

/// A reply pilotfish sends itself, with the flag that explains it.
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
    resp
}
