//! The demo's upstream: one version of a service that answers every request with its
//! name and the path it saw, so the demo can show where each request went.
use std::{convert::Infallible, net::SocketAddr};

use bytes::Bytes;
use http::{HeaderValue, Request, Response};
use http_body_util::Full;
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// Starts `version` on a free local port and returns its address.
pub async fn start(version: &'static str) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let svc = service_fn(move |req: Request<Incoming>| async move {
                let seen = req
                    .uri()
                    .path_and_query()
                    .map_or("/".to_owned(), |p| p.to_string());
                let mut resp = Response::new(Full::new(Bytes::from(format!(
                    "{version} answered {seen}\n"
                ))));
                let h = resp.headers_mut();
                h.insert("x-demo-version", HeaderValue::from_static(version));
                if let Ok(v) = HeaderValue::from_str(&seen) {
                    h.insert("x-demo-seen-path", v);
                }
                Ok::<_, Infallible>(resp)
            });
            tokio::spawn(http1::Builder::new().serve_connection(TokioIo::new(stream), svc));
        }
    });
    Ok(addr)
}
