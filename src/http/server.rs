//! Serves one downstream connection as HTTP/1.1 or HTTP/2 (prior knowledge), detected
//! from the connection preface when the codec is AUTO, and drains it gracefully.
use std::{
    convert::Infallible,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
};

use hyper::{server::conn::http1, server::conn::http2, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use super::{
    body, header_timeout,
    idle::ConnIdle,
    router::{Downstream, HttpConnectionManager},
};
use crate::{config::Codec, drain, net::conn::Conn, telemetry::stats::GaugeGuard};

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Envoy 1.40's flow-control windows for a downstream HTTP/2 connection when
/// `http2_protocol_options` sets none: 16 MiB per stream, 24 MiB for the connection.
const DEFAULT_STREAM_WINDOW: u32 = 16 << 20;
const DEFAULT_CONNECTION_WINDOW: u32 = 24 << 20;

/// Serves requests on `stream` until it closes, or until drain: then HTTP/2 sends
/// GOAWAY and HTTP/1 answers in-flight requests with `connection: close`.
pub async fn serve(
    mut stream: Conn,
    hcm: Arc<HttpConnectionManager>,
    down: Downstream,
    mut drain: drain::Watch,
) {
    let stats = &hcm.stats;
    stats.downstream_cx_total.inc();
    let _active = GaugeGuard::new(&stats.downstream_cx_active);
    // TLS: ALPN decides when it negotiated a protocol (as Envoy's AUTO codec does).
    let alpn = stream.tls().and_then(|t| t.alpn.clone());
    // What TLS established travels with each request (XFCC, RBAC, the scheme).
    let tls = stream.tls().cloned();
    let h2 = match (hcm.config.codec, alpn.as_deref()) {
        (Codec::Http1, _) => false,
        (Codec::Http2, _) => true,
        (Codec::Auto, Some(b"h2")) => true,
        (Codec::Auto, Some(b"http/1.1" | b"http/1.0")) => false,
        (Codec::Auto, _) => match stream.starts_with(H2_PREFACE).await {
            Ok(h2) => h2,
            Err(_) => return,
        },
    };
    // Set once this connection drains: an HTTP/1 response then says `connection: close`.
    // A flag of the connection's own, so requests touch no shared drain state.
    let closing = Arc::new(AtomicBool::new(false));
    // When the connection last started or finished a request, and how many it has.
    let idle = hcm.config.idle_timeout.map(ConnIdle::new);
    let svc_hcm = hcm.clone();
    let svc_closing = closing.clone();
    let svc_idle = idle.clone();
    // HTTP/1.1's `request_headers_timeout` clock (see `header_timeout`).
    let header_clock = match hcm.config.request_headers_timeout {
        Some(t) if !h2 => Some((header_timeout::Between::new(), t)),
        _ => None,
    };
    let svc_between = header_clock.as_ref().map(|(b, _)| b.clone());
    // `max_requests_per_connection`: requests so far, and the signal that an HTTP/2
    // connection reached the limit and drains.
    let served = Arc::new(AtomicU32::new(0));
    let limit_reached = Arc::new(tokio::sync::Notify::new());
    let svc_limit_reached = limit_reached.clone();
    let svc = service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
        if let Some(t) = &tls {
            req.extensions_mut().insert(t.clone());
        }
        let hcm = svc_hcm.clone();
        let closing = svc_closing.clone();
        let idle = svc_idle.clone();
        let between = svc_between.clone();
        let served = served.clone();
        let limit_reached = svc_limit_reached.clone();
        async move {
            let _busy = idle.as_ref().map(ConnIdle::busy);
            if let Some(b) = &between {
                b.request_started();
            }
            // As Envoy: every request at or past the limit counts; HTTP/1.1 closes
            // after the response to the last one, HTTP/2 starts draining at it.
            let last = hcm.config.max_requests_per_connection.is_some_and(|max| {
                let n = served.fetch_add(1, Ordering::Relaxed) + 1;
                if n >= max {
                    hcm.stats.downstream_cx_max_requests_reached.inc();
                }
                n == max
            });
            if last && h2 {
                limit_reached.notify_one();
            }
            let mut resp = hcm.handle(down, req).await;
            if last && !h2 {
                resp.headers_mut().insert(
                    http::header::CONNECTION,
                    http::HeaderValue::from_static("close"),
                );
            }
            // After a 101 the connection is a tunnel: no request heads to time.
            if let Some(b) = &between
                && resp.status() != http::StatusCode::SWITCHING_PROTOCOLS
            {
                let end = b.response_guard();
                resp = resp.map(|body| body::boxed(body::Guarded::new(body, end, None)));
            }
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
    let started = tokio::time::Instant::now();
    // Why the connection stops taking requests, if it does before it closes.
    let stop = async {
        let went_idle = async {
            match &idle {
                // A response still streaming its body when this fires counts as
                // idle: the connection then closes gracefully after it.
                Some(i) => i.expired().await,
                None => std::future::pending().await,
            }
        };
        let lifetime = async {
            match hcm.config.max_connection_duration {
                Some(d) => tokio::time::sleep_until(started + d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = drain.signaled_quietly() => Stop::Drain,
            () = went_idle => Stop::Idle,
            () = lifetime => Stop::MaxDuration,
            () = limit_reached.notified() => Stop::MaxRequests,
        }
    };
    if h2 {
        stats.downstream_cx_http2_total.inc();
        let h2 = &hcm.config.http2;
        let mut builder = http2::Builder::new(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .max_header_list_size(hcm.config.max_request_headers_kb * 1024)
            .max_concurrent_streams(h2.max_concurrent_streams)
            .initial_stream_window_size(
                h2.initial_stream_window_size
                    .unwrap_or(DEFAULT_STREAM_WINDOW),
            )
            .initial_connection_window_size(
                h2.initial_connection_window_size
                    .unwrap_or(DEFAULT_CONNECTION_WINDOW),
            );
        if let Some((interval, timeout)) = h2.keepalive {
            builder
                .keep_alive_interval(interval)
                .keep_alive_timeout(timeout);
        }
        let conn = builder.serve_connection(io, svc);
        tokio::pin!(conn);
        tokio::select! {
            _ = conn.as_mut() => {}
            why = stop => {
                why.count(stats);
                conn.as_mut().graceful_shutdown();
                let _ = conn.await;
            }
        }
    } else {
        stats.downstream_cx_http1_total.inc();
        // No header read timeout: Envoy's `request_headers_timeout` is off by default
        // (hyper's would be 30 s, and a timer per request).
        let io = match header_clock {
            Some((between, timeout)) => {
                let hcm = hcm.clone();
                let on_timeout = Box::new(move || hcm.header_timeout_reply(down, timeout));
                let stream = io.into_inner();
                TokioIo::new(header_timeout::HeaderClock::new(
                    stream, between, timeout, on_timeout,
                ))
            }
            None => TokioIo::new(header_timeout::HeaderClock::plain(io.into_inner())),
        };
        // The request head must fit in `max_request_headers_kb` (hyper answers 431).
        let conn = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(None)
            .max_header_size(hcm.config.max_request_headers_kb as usize * 1024)
            .serve_connection(io, svc)
            .with_upgrades();
        tokio::pin!(conn);
        let why = tokio::select! {
            _ = conn.as_mut() => return,
            why = stop => why,
        };
        why.count(stats);
        closing.store(true, Ordering::Relaxed);
        // A listener replaced by LDS, a connection at its maximum duration or idle
        // timeout (as Envoy's drain sequence) gives a keep-alive connection
        // `drain_timeout` for the request its client may be sending already (its
        // response says `close`); a process drain closes it at once.
        if !(why == Stop::Drain && drain.is_process_draining()) {
            let grace = tokio::time::sleep(hcm.config.drain_timeout);
            tokio::select! {
                _ = conn.as_mut() => return,
                _ = grace => {}
            }
        }
        conn.as_mut().graceful_shutdown();
        let _ = conn.await;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Drain,
    /// `common_http_protocol_options.idle_timeout`: no request for that long.
    Idle,
    /// `common_http_protocol_options.max_connection_duration`.
    MaxDuration,
    /// `common_http_protocol_options.max_requests_per_connection` (HTTP/2; counted
    /// per request).
    MaxRequests,
}

impl Stop {
    fn count(self, stats: &crate::telemetry::scopes::HttpStats) {
        match self {
            Stop::Drain | Stop::MaxRequests => {}
            Stop::Idle => stats.downstream_cx_idle_timeout.inc(),
            Stop::MaxDuration => stats.downstream_cx_max_duration_reached.inc(),
        }
    }
}
