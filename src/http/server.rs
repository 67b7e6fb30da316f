//! Serves one downstream connection as HTTP/1.1 or HTTP/2 (prior knowledge), detected
//! from the connection preface when the codec is AUTO, and drains it gracefully.
use std::{
    convert::Infallible,
    io,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use hyper::{server::conn::http1, server::conn::http2, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

use super::router::{Downstream, HttpConnectionManager};
use crate::{config::Codec, drain, telemetry::stats::GaugeGuard};

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Serves requests on `stream` until it closes, or until drain: then HTTP/2 sends
/// GOAWAY and HTTP/1 answers in-flight requests with `connection: close`.
pub async fn serve(
    stream: TcpStream,
    hcm: Arc<HttpConnectionManager>,
    down: Downstream,
    mut drain: drain::Watch,
) {
    let stats = &hcm.stats;
    stats.downstream_cx_total.inc();
    let _active = GaugeGuard::new(&stats.downstream_cx_active);
    let h2 = match hcm.config.codec {
        Codec::Http1 => false,
        Codec::Http2 => true,
        Codec::Auto => match starts_with_h2_preface(&stream).await {
            Ok(h2) => h2,
            Err(_) => return,
        },
    };
    // Set once this connection drains: an HTTP/1 response then says `connection: close`.
    // A flag of the connection's own, so requests touch no shared drain state.
    let closing = Arc::new(AtomicBool::new(false));
    let svc_hcm = hcm.clone();
    let svc_closing = closing.clone();
    let svc = service_fn(move |req| {
        let hcm = svc_hcm.clone();
        let closing = svc_closing.clone();
        async move {
            let mut resp = hcm.handle(down, req).await;
            if closing.load(Ordering::Relaxed) {
                resp.headers_mut().insert(
                    http::header::CONNECTION,
                    http::HeaderValue::from_static("close"),
                );
            }
            Ok::<_, Infallible>(resp)
        }
    });
    let io = TokioIo::new(stream);
    if h2 {
        stats.downstream_cx_http2_total.inc();
        let conn = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .serve_connection(io, svc);
        tokio::pin!(conn);
        tokio::select! {
            _ = conn.as_mut() => {}
            _ = drain.signaled_quietly() => {
                conn.as_mut().graceful_shutdown();
                let _ = conn.await;
            }
        }
    } else {
        stats.downstream_cx_http1_total.inc();
        // No header read timeout: Envoy's `request_headers_timeout` is off by default
        // (hyper's would be 30 s, and a timer per request).
        let conn = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(None)
            .serve_connection(io, svc)
            .with_upgrades();
        tokio::pin!(conn);
        tokio::select! {
            _ = conn.as_mut() => return,
            _ = drain.signaled_quietly() => closing.store(true, Ordering::Relaxed),
        }
        // A listener replaced by LDS gives an idle keep-alive connection time for the
        // request its client may be sending already (its response says `close`); a
        // process drain closes idle connections at once.
        if !drain.is_process_draining() {
            let grace = tokio::time::sleep(LISTENER_DRAIN_GRACE);
            tokio::select! {
                _ = conn.as_mut() => return,
                _ = grace => {}
            }
        }
        conn.as_mut().graceful_shutdown();
        let _ = conn.await;
    }
}

/// How long an HTTP/1 connection of a replaced listener may stay idle (Envoy's
/// connection manager `drain_timeout` default).
const LISTENER_DRAIN_GRACE: Duration = Duration::from_secs(5);

/// Peeks (without consuming) whether the client opened with the HTTP/2 preface.
async fn starts_with_h2_preface(stream: &TcpStream) -> io::Result<bool> {
    let mut buf = [0u8; 24];
    for _ in 0..1000 {
        let n = stream.peek(&mut buf).await?;
        if n == 0 || buf[..n] != H2_PREFACE[..n] {
            return Ok(false);
        }
        if n == H2_PREFACE.len() {
            return Ok(true);
        }
        // A partial preface: wait for the rest to arrive.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(false)
}
