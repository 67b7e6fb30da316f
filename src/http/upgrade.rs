//! HTTP/1.1 upgrades (WebSocket and any type `upgrade_configs` allows): the upgrade
//! request goes upstream on a connection of its own with its `connection`/`upgrade`
//! headers; after a `101` both connections are handed over and bytes are copied between
//! them until either side closes. An upgrade no config allows is answered 403, as Envoy
//! does; `h2c` upgrade requests are served as plain requests.
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Version, header};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use super::body::{self, Body};
use crate::telemetry::stats::{Gauge, GaugeGuard};

/// The `upgrade` header of an upgrade request (`connection: upgrade` over HTTP/1.1).
pub fn requested<B>(req: &Request<B>) -> Option<HeaderValue> {
    if req.version() != Version::HTTP_11 {
        return None;
    }
    let h = req.headers();
    let connection_upgrade = h.get_all(header::CONNECTION).iter().any(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
        })
    });
    let value = h.get(header::UPGRADE)?;
    (connection_upgrade && !value.as_bytes().eq_ignore_ascii_case(b"h2c")).then(|| value.clone())
}

/// Whether `kind` may upgrade: the route's `upgrade_configs` decide for the types they
/// name, the connection manager's for the rest.
pub fn allowed(kind: &HeaderValue, route: &[(String, bool)], hcm: &[String]) -> bool {
    let kind = kind.to_str().unwrap_or("").to_ascii_lowercase();
    match route.iter().find(|(t, _)| *t == kind) {
        Some((_, enabled)) => *enabled,
        None => hcm.contains(&kind),
    }
}

/// Envoy's answer to an upgrade no config allows.
pub fn forbidden() -> Response<Body> {
    let mut resp = Response::new(body::empty());
    *resp.status_mut() = StatusCode::FORBIDDEN;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

/// Puts back the headers hop-by-hop stripping removed from an upgrade request or its
/// `101` answer.
pub fn restore_headers(h: &mut HeaderMap, upgrade: HeaderValue) {
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, upgrade);
}

/// Joins the two upgraded connections once both sides have switched protocols.
pub fn tunnel(down: OnUpgrade, up: OnUpgrade, active: Gauge) {
    tokio::spawn(async move {
        let (Ok(down), Ok(up)) = tokio::join!(down, up) else {
            return;
        };
        let _active = GaugeGuard::new(&active);
        let (mut down, mut up) = (TokioIo::new(down), TokioIo::new(up));
        let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(headers: &[(&'static str, &'static str)]) -> Request<()> {
        let mut r = Request::new(());
        for (k, v) in headers {
            r.headers_mut().append(*k, HeaderValue::from_static(v));
        }
        r
    }

    #[test]
    fn upgrade_requests_are_recognized() {
        let ws = req(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket"),
        ]);
        assert_eq!(requested(&ws).unwrap(), "websocket");
        assert!(requested(&req(&[("upgrade", "websocket")])).is_none());
        assert!(requested(&req(&[("connection", "upgrade"), ("upgrade", "h2c")])).is_none());
        let ws = HeaderValue::from_static("WebSocket");
        assert!(allowed(&ws, &[], &["websocket".into()]));
        assert!(!allowed(
            &ws,
            &[("websocket".into(), false)],
            &["websocket".into()]
        ));
        assert!(allowed(&ws, &[("websocket".into(), true)], &[]));
        assert!(!allowed(&ws, &[], &[]));
    }
}
