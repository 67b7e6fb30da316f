//! Local answers a route gives without an upstream: `redirect` (a `location` built from
//! the request as Envoy builds it) and `direct_response`.
use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

use super::{
    body::{self, Body},
    rewrite,
};
use crate::config::{DirectResponse, PathMatch, Redirect, RedirectPath};

/// The redirect's `location` for a request to `authority` + `path_and_query` over plain
/// HTTP. `host_redirect` replaces the whole authority; `port_redirect` replaces the
/// port; a scheme change drops the old scheme's default port (80).
pub fn location(
    r: &Redirect,
    matched: &PathMatch,
    authority: &str,
    path_and_query: &str,
) -> String {
    let scheme = r.scheme.as_deref().unwrap_or("http");
    let mut host = r.host.clone().unwrap_or_else(|| authority.to_owned());
    if let Some(port) = r.port {
        host = format!("{}:{port}", strip_port(&host));
    } else if scheme != "http" && host.ends_with(":80") {
        host = strip_port(&host).to_owned();
    }
    let (path, query) = match path_and_query.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path_and_query, None),
    };
    let query = query.filter(|_| !r.strip_query);
    let path_and_query = match &r.path {
        None => join(path, query),
        // A `path_redirect` with its own query string replaces the request's.
        Some(RedirectPath::Replace(p)) if p.contains('?') => p.clone(),
        Some(RedirectPath::Replace(p)) => join(p, query),
        Some(RedirectPath::Rewrite(rw)) => {
            let rewritten = rewrite::path(rw, matched, path);
            join(&rewritten, query)
        }
    };
    format!("{scheme}://{host}{path_and_query}")
}

fn join(path: &str, query: Option<&str>) -> String {
    match query {
        Some(q) => format!("{path}?{q}"),
        None => path.to_owned(),
    }
}

/// `host:port` → `host`, leaving IPv6 literals (`[::1]`) and port-less hosts whole.
fn strip_port(host: &str) -> &str {
    match host.rsplit_once(':') {
        Some((h, p))
            if !h.is_empty() && !p.contains(']') && p.bytes().all(|b| b.is_ascii_digit()) =>
        {
            h
        }
        _ => host,
    }
}

pub fn redirect_response(r: &Redirect, location: &str) -> Response<Body> {
    let mut resp = Response::new(body::empty());
    *resp.status_mut() = StatusCode::from_u16(r.status).unwrap_or(StatusCode::MOVED_PERMANENTLY);
    if let Ok(v) = HeaderValue::from_str(location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    resp
}

pub fn direct_response(d: &DirectResponse) -> Response<Body> {
    let mut resp = match &d.body {
        Some(b) => {
            let mut resp = Response::new(body::full(Bytes::from(b.clone())));
            resp.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
            resp.headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from(b.len()));
            resp
        }
        None => {
            let mut resp = Response::new(body::empty());
            resp.headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
            resp
        }
    };
    *resp.status_mut() = StatusCode::from_u16(d.status).unwrap_or(StatusCode::OK);
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PathRewrite;

    fn r() -> Redirect {
        Redirect {
            scheme: None,
            host: None,
            port: None,
            path: None,
            strip_query: false,
            status: 301,
        }
    }

    /// The locations Envoy 1.40 sent for the same redirects.
    #[test]
    fn locations_as_envoy_builds_them() {
        let any = PathMatch::Prefix("/".into());
        let https = Redirect {
            scheme: Some("https".into()),
            ..r()
        };
        let cases = [
            (
                https.clone(),
                "svc.local:8080",
                "/https/x?q=1",
                "https://svc.local:8080/https/x?q=1",
            ),
            (
                https.clone(),
                "svc.local:80",
                "/https",
                "https://svc.local/https",
            ),
            (https, "svc.local", "/https", "https://svc.local/https"),
            (
                Redirect {
                    host: Some("new.example.com".into()),
                    ..r()
                },
                "svc.local:8080",
                "/host/x",
                "http://new.example.com/host/x",
            ),
            (
                Redirect {
                    port: Some(8443),
                    scheme: Some("https".into()),
                    ..r()
                },
                "svc.local:8080",
                "/port/x",
                "https://svc.local:8443/port/x",
            ),
            (
                Redirect {
                    path: Some(RedirectPath::Replace("/new/path".into())),
                    ..r()
                },
                "svc.local:8080",
                "/path?q=1",
                "http://svc.local:8080/new/path?q=1",
            ),
            (
                Redirect {
                    path: Some(RedirectPath::Replace("/new?a=b".into())),
                    ..r()
                },
                "h",
                "/pq?q=1",
                "http://h/new?a=b",
            ),
            (
                Redirect {
                    path: Some(RedirectPath::Replace("/s".into())),
                    strip_query: true,
                    ..r()
                },
                "h",
                "/strip?q=1",
                "http://h/s",
            ),
        ];
        for (redirect, authority, path, want) in cases {
            assert_eq!(
                location(&redirect, &any, authority, path),
                want,
                "{redirect:?}"
            );
        }
        let prefix = Redirect {
            path: Some(RedirectPath::Rewrite(PathRewrite::Prefix("/new/".into()))),
            ..r()
        };
        assert_eq!(
            location(
                &prefix,
                &PathMatch::Prefix("/old/".into()),
                "h",
                "/old/a/b?z"
            ),
            "http://h/new/a/b?z"
        );
    }
}
