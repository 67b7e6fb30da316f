//! What Envoy's HTTP/1 codec refuses before a request reaches any filter, checked on
//! what hyper parsed: HTTP/1.0 unless accepted, methods outside the known set,
//! `Transfer-Encoding` other than `chunked` or together with `Content-Length` (where
//! hyper leaves both), and a missing `Host`. Each is answered as Envoy answers it (and
//! the connection closes), so a request two parsers could read differently never goes
//! upstream. hyper refuses the rest itself (obs-fold, bare CR, `chunked` not last,
//! conflicting `Content-Length`s, …) and reads two equal `Content-Length`s as one.
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode, Version, header};

use super::{
    body::Body,
    local_reply::{self, ResponseFlag},
};

/// Why a response was made (`%RESPONSE_CODE_DETAILS%`), kept on it for the access log.
#[derive(Debug, Clone, Copy)]
pub struct Details(pub &'static str);

/// The connection manager's HTTP/1 settings (`http_protocol_options`).
#[derive(Debug, Clone, Default)]
pub struct Http1Settings {
    /// `accept_http_10`: serve HTTP/1.0 (Envoy answers it 426 otherwise).
    pub accept_http_10: bool,
    /// `default_host_for_http_10`: the `Host` of an HTTP/1.0 request without one.
    pub default_host_for_http_10: Option<HeaderValue>,
}

/// Methods Envoy's HTTP/1 codec knows (its parser's list); any other is a 400.
const METHODS: &[&str] = &[
    "GET",
    "HEAD",
    "POST",
    "PUT",
    "DELETE",
    "CONNECT",
    "OPTIONS",
    "TRACE",
    "PATCH",
    "COPY",
    "LOCK",
    "MKCOL",
    "MOVE",
    "PROPFIND",
    "PROPPATCH",
    "SEARCH",
    "UNLOCK",
    "BIND",
    "REBIND",
    "UNBIND",
    "ACL",
    "REPORT",
    "MKACTIVITY",
    "CHECKOUT",
    "MERGE",
    "M-SEARCH",
    "NOTIFY",
    "SUBSCRIBE",
    "UNSUBSCRIBE",
    "MKCALENDAR",
    "LINK",
    "UNLINK",
    "SOURCE",
    "PURGE",
];

/// The reply for an HTTP/1 request Envoy's codec would refuse; `None` to serve it. An
/// accepted HTTP/1.0 request without `Host` gets the configured default.
pub fn check_http1<B>(
    req: &mut Request<B>,
    settings: &Http1Settings,
) -> Option<http::Response<Body>> {
    let version = req.version();
    if version != Version::HTTP_11 && version != Version::HTTP_10 && version != Version::HTTP_09 {
        return None;
    }
    if version != Version::HTTP_11 && !settings.accept_http_10 {
        return Some(codec_error(StatusCode::UPGRADE_REQUIRED, "low_version"));
    }
    if !known_method(req.method()) {
        return Some(codec_error(StatusCode::BAD_REQUEST, "http1.codec_error"));
    }
    let h = req.headers();
    if let Some(te) = h.get(header::TRANSFER_ENCODING) {
        if h.contains_key(header::CONTENT_LENGTH) {
            return Some(codec_error(
                StatusCode::BAD_REQUEST,
                "http1.content_length_and_chunked_not_allowed",
            ));
        }
        let chunked = h.get_all(header::TRANSFER_ENCODING).iter().count() == 1
            && te
                .to_str()
                .is_ok_and(|v| v.trim().eq_ignore_ascii_case("chunked"));
        if !chunked {
            return Some(codec_error(
                StatusCode::NOT_IMPLEMENTED,
                "http1.invalid_transfer_encoding",
            ));
        }
    }
    if !h.contains_key(header::HOST) && req.uri().authority().is_none() {
        match &settings.default_host_for_http_10 {
            Some(host) if version != Version::HTTP_11 => {
                req.headers_mut().insert(header::HOST, host.clone());
            }
            _ => {
                let mut resp =
                    local_reply::with_body(StatusCode::BAD_REQUEST, "", ResponseFlag::NoFlag);
                close(resp.headers_mut());
                resp.extensions_mut().insert(Details("missing_host_header"));
                return Some(resp);
            }
        }
    }
    None
}

fn known_method(m: &Method) -> bool {
    // The common ones without a string compare.
    *m == Method::GET || *m == Method::POST || METHODS.contains(&m.as_str())
}

/// Envoy's reply to a request its codec refuses: the status and its reason as a
/// `text/plain` body, flag `DPE`, and the connection closed.
pub fn codec_error(status: StatusCode, details: &'static str) -> http::Response<Body> {
    let mut resp = local_reply::with_body(
        status,
        status.canonical_reason().unwrap_or(""),
        ResponseFlag::DownstreamProtocolError,
    );
    close(resp.headers_mut());
    resp.extensions_mut().insert(Details(details));
    resp
}

fn close(h: &mut HeaderMap) {
    h.insert(header::CONNECTION, HeaderValue::from_static("close"));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(raw: &[(&str, &str)], method: &str, version: Version) -> Request<()> {
        let mut b = Request::builder().method(method).uri("/a").version(version);
        for (k, v) in raw {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    fn status(mut r: Request<()>, s: &Http1Settings) -> Option<(u16, &'static str)> {
        check_http1(&mut r, s).map(|resp| {
            (
                resp.status().as_u16(),
                resp.extensions().get::<Details>().unwrap().0,
            )
        })
    }

    #[test]
    fn refuses_what_envoys_codec_refuses() {
        let s = Http1Settings::default();
        let v11 = Version::HTTP_11;
        let host = ("host", "svc");
        assert_eq!(status(req(&[host], "GET", v11), &s), None);
        assert_eq!(status(req(&[host], "PURGE", v11), &s), None);
        assert_eq!(
            status(req(&[host], "get", v11), &s),
            Some((400, "http1.codec_error"))
        );
        assert_eq!(
            status(req(&[host], "GET", Version::HTTP_10), &s),
            Some((426, "low_version"))
        );
        assert_eq!(
            status(
                req(
                    &[
                        host,
                        ("content-length", "4"),
                        ("transfer-encoding", "chunked")
                    ],
                    "POST",
                    v11
                ),
                &s
            ),
            Some((400, "http1.content_length_and_chunked_not_allowed"))
        );
        assert_eq!(
            status(
                req(&[host, ("transfer-encoding", "gzip, chunked")], "POST", v11),
                &s
            ),
            Some((501, "http1.invalid_transfer_encoding"))
        );
        assert_eq!(
            status(
                req(&[host, ("transfer-encoding", "Chunked")], "POST", v11),
                &s
            ),
            None
        );
        assert_eq!(
            status(req(&[], "GET", v11), &s),
            Some((400, "missing_host_header"))
        );
    }

    #[test]
    fn http10_when_accepted_gets_the_default_host() {
        let s = Http1Settings {
            accept_http_10: true,
            default_host_for_http_10: Some(HeaderValue::from_static("dflt")),
        };
        let mut r = req(&[], "GET", Version::HTTP_10);
        assert!(check_http1(&mut r, &s).is_none());
        assert_eq!(r.headers()["host"], "dflt");
    }
}
