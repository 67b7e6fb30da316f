//! Access logs: Envoy's substitution format strings (`%RESPONSE_FLAGS%`, `%REQ(X)%` …)
//! in text or JSON, written by `envoy.access_loggers.file` / `stdout` / `stderr`.
//!
//! A request's line is formatted on the worker when the request ends and appended to
//! its target's pending bytes (a short lock, never held across I/O). A writer task on
//! the control runtime writes them out every `--file-flush-interval-msec` (Envoy's
//! default, 10 s), or as soon as `--file-flush-min-size-kb` (64 KiB) are pending, as
//! Envoy's file flushing does;
//! with an interval of 0 a line is written as soon as the writer gets to it. Traffic
//! never waits on a disk and wakes the writer once per batch, not per line. Lines
//! beyond 8 MiB pending are dropped and counted.
use crate::sync::MutexExt;
use std::{
    collections::HashMap,
    fmt::Write as _,
    io::Write as _,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use http::{HeaderMap, HeaderName};

use super::stats::{Counter, Store};

/// Envoy's default access log format.
pub const DEFAULT_FORMAT: &str = "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" %RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" \"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\"\n";

/// Where lines go.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    File(String),
    Stdout,
    Stderr,
    /// Records exported over OTLP (`envoy.access_loggers.open_telemetry`).
    OpenTelemetry,
}

/// One configured access log.
#[derive(Debug, Clone)]
pub struct AccessLogConfig {
    pub target: Target,
    pub format: Format,
    /// `filter`: which records this log writes (all without one).
    pub filter: Option<super::access_log_filter::LogFilter>,
    /// The OTLP exporter's settings, for `Target::OpenTelemetry`.
    pub otel: Option<Arc<super::otel_access_log::OtelLogConfig>>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Format {
    Text(Vec<Piece>),
    /// `json_format`: keys with formatted values; one JSON object per line.
    Json(Vec<(String, Vec<Piece>)>, bool),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Piece {
    Literal(String),
    Op(Op),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    StartTime,
    /// `%REQ(A?B):N%`: header A, else B, truncated to N.
    Req(HeaderSel),
    Resp(HeaderSel),
    Trailer(HeaderSel),
    Protocol,
    ResponseCode,
    ResponseCodeDetails,
    ResponseFlags,
    BytesReceived,
    BytesSent,
    Duration,
    UpstreamHost,
    UpstreamCluster,
    UpstreamLocalAddress,
    UpstreamTransportFailureReason,
    DownstreamRemoteAddress,
    DownstreamRemoteAddressWithoutPort,
    DownstreamPeerAddress,
    DownstreamLocalAddress,
    DownstreamLocalAddressWithoutPort,
    RequestedServerName,
    RouteName,
    ConnectionTerminationDetails,
    Hostname,
    /// The downstream TLS connection's facts.
    DownstreamPeerUriSan,
    DownstreamLocalUriSan,
    DownstreamPeerSubject,
    DownstreamPeerFingerprint256,
    DownstreamTlsVersion,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HeaderSel {
    names: Vec<String>,
    max_len: Option<usize>,
}

/// Parses an Envoy format string; unknown operators are an error naming them.
pub fn parse(format: &str) -> Result<Vec<Piece>, String> {
    let mut pieces = Vec::new();
    let mut lit = String::new();
    let mut rest = format;
    while let Some(i) = rest.find('%') {
        lit.push_str(&rest[..i]);
        rest = &rest[i + 1..];
        if let Some(r) = rest.strip_prefix('%') {
            lit.push('%');
            rest = r;
            continue;
        }
        let end = rest
            .find('%')
            .ok_or_else(|| format!("unterminated command operator in '{format}'"))?;
        let op = parse_op(&rest[..end])?;
        if !lit.is_empty() {
            pieces.push(Piece::Literal(std::mem::take(&mut lit)));
        }
        pieces.push(Piece::Op(op));
        rest = &rest[end + 1..];
    }
    lit.push_str(rest);
    if !lit.is_empty() {
        pieces.push(Piece::Literal(lit));
    }
    Ok(pieces)
}

fn parse_op(text: &str) -> Result<Op, String> {
    let sel = |arg: &str, tail: &str| -> Result<HeaderSel, String> {
        let max_len = match tail.strip_prefix(':') {
            Some(n) => Some(
                n.parse()
                    .map_err(|_| format!("invalid length in %{text}%"))?,
            ),
            None if tail.is_empty() => None,
            None => return Err(format!("invalid command operator %{text}%")),
        };
        let names = arg.split('?').map(|n| n.to_ascii_lowercase()).collect();
        Ok(HeaderSel { names, max_len })
    };
    for (prefix, kind) in [("REQ(", 0), ("RESP(", 1), ("TRAILER(", 2)] {
        if let Some(inner) = text.strip_prefix(prefix) {
            let close = inner
                .find(')')
                .ok_or_else(|| format!("invalid command operator %{text}%"))?;
            let s = sel(&inner[..close], &inner[close + 1..])?;
            return Ok(match kind {
                0 => Op::Req(s),
                1 => Op::Resp(s),
                _ => Op::Trailer(s),
            });
        }
    }
    Ok(match text {
        "START_TIME" => Op::StartTime,
        "PROTOCOL" => Op::Protocol,
        "RESPONSE_CODE" => Op::ResponseCode,
        "RESPONSE_CODE_DETAILS" => Op::ResponseCodeDetails,
        "RESPONSE_FLAGS" => Op::ResponseFlags,
        "BYTES_RECEIVED" => Op::BytesReceived,
        "BYTES_SENT" => Op::BytesSent,
        "DURATION" => Op::Duration,
        "UPSTREAM_HOST" => Op::UpstreamHost,
        "UPSTREAM_CLUSTER" => Op::UpstreamCluster,
        "UPSTREAM_LOCAL_ADDRESS" => Op::UpstreamLocalAddress,
        "UPSTREAM_TRANSPORT_FAILURE_REASON" => Op::UpstreamTransportFailureReason,
        "DOWNSTREAM_REMOTE_ADDRESS" => Op::DownstreamRemoteAddress,
        "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT" => Op::DownstreamRemoteAddressWithoutPort,
        "DOWNSTREAM_DIRECT_REMOTE_ADDRESS" | "DOWNSTREAM_PEER_ADDRESS" => Op::DownstreamPeerAddress,
        "DOWNSTREAM_LOCAL_ADDRESS" => Op::DownstreamLocalAddress,
        "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT" => Op::DownstreamLocalAddressWithoutPort,
        "REQUESTED_SERVER_NAME" => Op::RequestedServerName,
        "DOWNSTREAM_PEER_URI_SAN" => Op::DownstreamPeerUriSan,
        "DOWNSTREAM_LOCAL_URI_SAN" => Op::DownstreamLocalUriSan,
        "DOWNSTREAM_PEER_SUBJECT" => Op::DownstreamPeerSubject,
        "DOWNSTREAM_PEER_FINGERPRINT_256" => Op::DownstreamPeerFingerprint256,
        "DOWNSTREAM_TLS_VERSION" => Op::DownstreamTlsVersion,
        "ROUTE_NAME" => Op::RouteName,
        "CONNECTION_TERMINATION_DETAILS" => Op::ConnectionTerminationDetails,
        "HOSTNAME" => Op::Hostname,
        other => return Err(format!("command operator %{other}% is not supported")),
    })
}

/// Everything a log line may name about one request or connection.
#[derive(Debug, Default)]
pub struct Record {
    pub start: Option<SystemTime>,
    pub method: Option<String>,
    pub path: Option<String>,
    pub authority: Option<String>,
    pub scheme: Option<&'static str>,
    pub protocol: Option<&'static str>,
    pub request_headers: Option<HeaderMap>,
    pub response_headers: Option<HeaderMap>,
    pub response_code: u16,
    pub response_flags: Option<String>,
    pub response_code_details: Option<&'static str>,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub duration: Duration,
    pub upstream_host: Option<SocketAddr>,
    pub upstream_cluster: Option<String>,
    pub upstream_local: Option<SocketAddr>,
    pub downstream_remote: Option<SocketAddr>,
    /// The connection's peer, when the connection manager took the client's address
    /// from `x-forwarded-for` (`%DOWNSTREAM_DIRECT_REMOTE_ADDRESS%`); else the same.
    pub downstream_direct_remote: Option<SocketAddr>,
    pub downstream_local: Option<SocketAddr>,
    pub route_name: Option<String>,
    /// The SNI the TLS inspector read.
    pub requested_server_name: Option<String>,
    /// Why the upstream connection failed (a connect or TLS error), in Envoy's words.
    pub upstream_transport_failure_reason: Option<String>,
    /// What the downstream TLS handshake established, on a TLS connection.
    pub tls: Option<std::sync::Arc<crate::tls::PeerInfo>>,
    /// The request is traced because `x-envoy-force-trace` asked (what Envoy's
    /// `traceable_filter` admits).
    pub trace_forced: bool,
    /// The gRPC status of the response (trailers, else headers).
    pub grpc_status: Option<u32>,
    /// The request's trace id and span id, when it has a span.
    pub trace_context: Option<([u8; 16], u64)>,
}

impl Record {
    fn header(&self, h: Option<&HeaderMap>, sel: &HeaderSel, req: bool) -> Option<String> {
        let v = sel.names.iter().find_map(|n| {
            if req {
                match n.as_str() {
                    ":method" => return self.method.clone(),
                    ":path" => return self.path.clone(),
                    ":authority" => return self.authority.clone(),
                    ":scheme" => return self.scheme.map(str::to_owned),
                    _ => {}
                }
            }
            let name = HeaderName::from_bytes(n.as_bytes()).ok()?;
            h?.get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        })?;
        Some(match sel.max_len {
            Some(n) if v.len() > n => v.chars().take(n).collect(),
            _ => v,
        })
    }

    fn value(&self, op: &Op) -> Option<String> {
        let addr = |a: Option<SocketAddr>| a.map(|a| a.to_string());
        let ip = |a: Option<SocketAddr>| a.map(|a| a.ip().to_string());
        match op {
            Op::StartTime => self.start.map(rfc3339_millis),
            Op::Req(s) => self.header(self.request_headers.as_ref(), s, true),
            Op::Resp(s) => self.header(self.response_headers.as_ref(), s, false),
            Op::Trailer(_) => None,
            Op::Protocol => self.protocol.map(str::to_owned),
            Op::ResponseCode => Some(self.response_code.to_string()),
            Op::ResponseCodeDetails => self.response_code_details.map(str::to_owned),
            Op::ResponseFlags => Some(self.response_flags.as_deref().unwrap_or("-").to_owned()),
            Op::BytesReceived => Some(self.bytes_received.to_string()),
            Op::BytesSent => Some(self.bytes_sent.to_string()),
            Op::Duration => Some(self.duration.as_millis().to_string()),
            Op::UpstreamHost => addr(self.upstream_host),
            Op::UpstreamCluster => self.upstream_cluster.clone(),
            Op::UpstreamLocalAddress => addr(self.upstream_local),
            // Envoy writes it with spaces as underscores.
            Op::UpstreamTransportFailureReason => self
                .upstream_transport_failure_reason
                .as_ref()
                .map(|r| r.replace(' ', "_")),
            Op::DownstreamRemoteAddress => addr(self.downstream_remote),
            Op::DownstreamPeerAddress => {
                addr(self.downstream_direct_remote.or(self.downstream_remote))
            }
            Op::DownstreamRemoteAddressWithoutPort => ip(self.downstream_remote),
            Op::DownstreamLocalAddress => addr(self.downstream_local),
            Op::DownstreamLocalAddressWithoutPort => ip(self.downstream_local),
            Op::RequestedServerName => self.requested_server_name.clone(),
            Op::RouteName => self.route_name.clone().filter(|n| !n.is_empty()),
            Op::ConnectionTerminationDetails => None,
            Op::Hostname => std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_owned()),
            Op::DownstreamPeerUriSan => self.tls.as_ref()?.uri_san.clone(),
            Op::DownstreamLocalUriSan => self.tls.as_ref()?.local_uri_san(),
            Op::DownstreamPeerSubject => {
                let der = self.tls.as_ref()?.certificate.clone()?;
                Some(crate::tls::certs::subject(&der))
            }
            Op::DownstreamPeerFingerprint256 => {
                let der = self.tls.as_ref()?.certificate.clone()?;
                Some(crate::tls::certs::sha256_hex(&der))
            }
            Op::DownstreamTlsVersion => self.tls.as_ref()?.version.map(str::to_owned),
        }
    }

    fn render_pieces(&self, pieces: &[Piece], out: &mut String) {
        self.render_with(pieces, "-", out);
    }

    fn render_with(&self, pieces: &[Piece], missing: &str, out: &mut String) {
        for p in pieces {
            match p {
                Piece::Literal(s) => out.push_str(s),
                Piece::Op(op) => out.push_str(self.value(op).as_deref().unwrap_or(missing)),
            }
        }
    }

    /// Format pieces as a log line renders them (a missing value is `-`).
    pub fn render_text(&self, pieces: &[Piece]) -> String {
        let mut out = String::new();
        self.render_with(pieces, "-", &mut out);
        out
    }

    /// A header value from format pieces: as a log line, but a missing value renders
    /// empty (as Envoy's header formatter does) instead of `-`.
    pub fn render_value(&self, pieces: &[Piece]) -> String {
        let mut out = String::new();
        self.render_with(pieces, "", &mut out);
        out
    }

    /// The line for `format`, newline-terminated.
    pub fn render(&self, format: &Format) -> String {
        let mut out = String::with_capacity(256);
        match format {
            Format::Text(pieces) => self.render_pieces(pieces, &mut out),
            Format::Json(fields, omit_empty) => {
                let mut map = serde_json::Map::new();
                for (k, pieces) in fields {
                    // A lone operator keeps its type (numbers stay numbers), as Envoy does.
                    let v = match pieces.as_slice() {
                        [Piece::Op(op)] => match self.value(op) {
                            None if *omit_empty => continue,
                            None => serde_json::Value::Null,
                            Some(s) if is_numeric(op) => {
                                s.parse::<u64>().map(Into::into).unwrap_or(s.into())
                            }
                            Some(s) => s.into(),
                        },
                        _ => {
                            let mut s = String::new();
                            self.render_pieces(pieces, &mut s);
                            s.into()
                        }
                    };
                    map.insert(k.clone(), v);
                }
                let _ = write!(out, "{}", serde_json::Value::Object(map));
                out.push('\n');
            }
        }
        if !out.ends_with('\n') {
            out.push('\n');
        }
        out
    }
}

fn is_numeric(op: &Op) -> bool {
    matches!(
        op,
        Op::ResponseCode | Op::BytesReceived | Op::BytesSent | Op::Duration
    )
}

/// `2026-11-23T07:34:43.123Z`, as Envoy's `%START_TIME%`.
pub fn rfc3339_millis(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// A configured log bound to its target.
#[derive(Debug, Clone)]
pub struct AccessLog {
    format: Format,
    filter: Option<super::access_log_filter::LogFilter>,
    out: Out,
    dropped: Counter,
}

#[derive(Debug, Clone)]
enum Out {
    Lines(Arc<Sink>),
    Otel(Arc<super::otel_access_log::OtelLogger>),
}

impl AccessLog {
    pub fn write(&self, record: &Record) {
        if let Some(f) = &self.filter
            && !f.admits(record)
        {
            return;
        }
        match &self.out {
            Out::Lines(sink) => {
                if !sink.push(&record.render(&self.format)) {
                    self.dropped.inc();
                }
            }
            Out::Otel(o) => o.write(record),
        }
    }
}

/// Pending bytes at which the writer is woken at once: Envoy's default minimum flush
/// size (`--file-flush-min-size-kb`).
pub const FLUSH_SIZE: usize = 64 * 1024;
/// Pending bytes beyond which lines are dropped: a stuck disk costs memory up to this.
const MAX_PENDING: usize = 8 * 1024 * 1024;

/// One target: the lines not yet written, and the output.
struct Sink {
    pending: Mutex<Vec<u8>>,
    out: Mutex<Box<dyn std::io::Write + Send>>,
    wake: tokio::sync::Notify,
    /// A zero flush interval: the first line of each batch wakes the writer.
    eager: bool,
    /// Pending bytes that wake the writer at once.
    flush_size: usize,
}

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sink").field("eager", &self.eager).finish()
    }
}

impl Sink {
    /// Queues a line; false when it was dropped.
    fn push(&self, line: &str) -> bool {
        let mut pending = self.pending.locked();
        if pending.len() + line.len() > MAX_PENDING {
            return false;
        }
        let first = pending.is_empty();
        pending.extend_from_slice(line.as_bytes());
        let full = pending.len() >= self.flush_size;
        drop(pending);
        if full || (first && self.eager) {
            self.wake.notify_one();
        }
        true
    }

    /// Writes out what is pending.
    fn flush(&self) {
        let bytes = std::mem::take(&mut *self.pending.locked());
        if bytes.is_empty() {
            return;
        }
        let mut out = self.out.locked();
        let _ = out.write_all(&bytes);
        let _ = out.flush();
    }
}

/// Writers, one per target, on the runtime given at creation.
#[derive(Debug)]
pub struct Sinks {
    runtime: tokio::runtime::Handle,
    store: Arc<Store>,
    sinks: Mutex<HashMap<Target, Arc<Sink>>>,
    /// `--file-flush-interval-msec`: how long a written line may wait before it is
    /// written out; zero writes each as soon as the writer gets to it.
    flush_interval: std::time::Duration,
    /// `--file-flush-min-size-kb`: pending bytes written out at once.
    flush_size: usize,
    /// What OTLP access logs need: the clusters they export through, and the node.
    otel_context: Option<(
        Arc<crate::upstream::ClusterManager>,
        super::tracing::NodeIdentity,
    )>,
    /// OTLP loggers, one per distinct configuration.
    otel: Mutex<Vec<Arc<super::otel_access_log::OtelLogger>>>,
}

impl Sinks {
    /// Sinks that write each line at once (for tests).
    pub fn new(runtime: tokio::runtime::Handle, store: Arc<Store>) -> Self {
        Sinks::with_flush_interval(runtime, store, std::time::Duration::ZERO)
    }

    pub fn with_flush_interval(
        runtime: tokio::runtime::Handle,
        store: Arc<Store>,
        flush_interval: std::time::Duration,
    ) -> Self {
        Sinks {
            runtime,
            store,
            sinks: Mutex::default(),
            flush_interval,
            flush_size: FLUSH_SIZE,
            otel_context: None,
            otel: Mutex::default(),
        }
    }

    /// Enables OTLP access logs, through `clusters`, labelled with `node`.
    pub fn with_otel(
        mut self,
        clusters: Arc<crate::upstream::ClusterManager>,
        node: super::tracing::NodeIdentity,
    ) -> Self {
        self.otel_context = Some((clusters, node));
        self
    }

    /// Pending bytes that are written out at once, whatever the interval.
    pub fn with_flush_size(mut self, bytes: usize) -> Self {
        self.flush_size = bytes.max(1);
        self
    }

    /// Binds a configured log to its target, starting the target's writer if needed.
    pub fn open(&self, cfg: &AccessLogConfig) -> Result<AccessLog, String> {
        let dropped = self.store.counter(
            "pilotfish.access_log.dropped".into(),
            "pilotfish_access_log_dropped",
            &[],
        );
        if let Some(otel) = &cfg.otel {
            let Some((clusters, node)) = &self.otel_context else {
                return Err("OpenTelemetry access logs are not available here".into());
            };
            let mut made = self.otel.lock().unwrap_or_else(|e| e.into_inner());
            let logger = match made.iter().find(|l| l.config() == &**otel) {
                Some(l) => l.clone(),
                None => {
                    let l = Arc::new(super::otel_access_log::OtelLogger::start(
                        otel.clone(),
                        clusters.clone(),
                        node,
                        &self.store,
                        &self.runtime,
                        dropped.clone(),
                    ));
                    made.push(l.clone());
                    l
                }
            };
            return Ok(AccessLog {
                format: cfg.format.clone(),
                filter: cfg.filter.clone(),
                out: Out::Otel(logger),
                dropped,
            });
        }
        let mut sinks = self.sinks.locked();
        let sink = match sinks.get(&cfg.target) {
            Some(s) => s.clone(),
            None => {
                let out: Box<dyn std::io::Write + Send> = match &cfg.target {
                    Target::Stdout => Box::new(std::io::stdout()),
                    Target::Stderr => Box::new(std::io::stderr()),
                    Target::File(p) => Box::new(
                        std::fs::OpenOptions::new()
                            .create(true)
                            .append(true)
                            .open(p)
                            .map_err(|e| format!("access log {p}: {e}"))?,
                    ),
                    Target::OpenTelemetry => {
                        return Err("an OpenTelemetry access log needs its settings".into());
                    }
                };
                let sink = Arc::new(Sink {
                    pending: Mutex::new(Vec::new()),
                    out: Mutex::new(out),
                    wake: tokio::sync::Notify::new(),
                    eager: self.flush_interval.is_zero(),
                    flush_size: self.flush_size,
                });
                self.runtime
                    .spawn(write_out(sink.clone(), self.flush_interval));
                sinks.insert(cfg.target.clone(), sink.clone());
                sink
            }
        };
        Ok(AccessLog {
            format: cfg.format.clone(),
            filter: cfg.filter.clone(),
            out: Out::Lines(sink),
            dropped,
        })
    }

    /// Writes out every target's pending lines now (at exit).
    pub fn flush(&self) {
        for s in self.sinks.locked().values() {
            s.flush();
        }
    }
}

/// A target's writer, for the life of the process: writes the pending lines every
/// `interval`, or when woken (the flush size pending, or any line with a zero
/// interval).
async fn write_out(sink: Arc<Sink>, interval: std::time::Duration) {
    loop {
        if interval.is_zero() {
            sink.wake.notified().await;
        } else {
            tokio::select! {
                () = sink.wake.notified() => {}
                () = tokio::time::sleep(interval) => {}
            }
        }
        sink.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_envoy_default_format() {
        let p = parse(DEFAULT_FORMAT).unwrap();
        assert!(p.contains(&Piece::Op(Op::ResponseFlags)));
        assert!(p.contains(&Piece::Op(Op::Req(HeaderSel {
            names: vec!["x-envoy-original-path".into(), ":path".into()],
            max_len: None
        }))));
    }

    #[test]
    fn unknown_operators_are_errors() {
        assert_eq!(
            parse("%NOPE%").unwrap_err(),
            "command operator %NOPE% is not supported"
        );
        assert!(parse("%REQ(x").is_err());
        assert!(parse("%START_TIME").is_err());
    }

    #[test]
    fn renders_text_with_dashes_for_missing_values() {
        let mut h = HeaderMap::new();
        h.insert("user-agent", "curl/8.0 long agent".parse().unwrap());
        let r = Record {
            start: Some(SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_420_483_123)),
            method: Some("GET".into()),
            path: Some("/x".into()),
            protocol: Some("HTTP/1.1"),
            request_headers: Some(h),
            response_code: 503,
            response_flags: Some("UH".into()),
            bytes_sent: 19,
            ..Default::default()
        };
        let f = Format::Text(parse("[%START_TIME%] %REQ(:METHOD)% %REQ(:PATH)% %PROTOCOL% %RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_SENT% %REQ(USER-AGENT):8% %UPSTREAM_HOST% 100%%").unwrap());
        assert_eq!(
            r.render(&f),
            "[2026-11-23T07:54:43.123Z] GET /x HTTP/1.1 503 UH 19 curl/8.0 - 100%\n"
        );
    }

    #[test]
    fn renders_json_keeping_numbers() {
        let r = Record {
            response_code: 200,
            response_flags: None,
            ..Default::default()
        };
        let f = Format::Json(
            vec![
                ("code".into(), parse("%RESPONSE_CODE%").unwrap()),
                ("flags".into(), parse("%RESPONSE_FLAGS%").unwrap()),
                ("host".into(), parse("%UPSTREAM_HOST%").unwrap()),
            ],
            true,
        );
        assert_eq!(r.render(&f), "{\"code\":200,\"flags\":\"-\"}\n");
    }

    /// With a flush interval, lines reach the file only once it has passed.
    #[tokio::test(start_paused = true)]
    async fn lines_wait_for_the_flush_interval() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let sinks = Sinks::with_flush_interval(
            tokio::runtime::Handle::current(),
            Store::new(),
            Duration::from_secs(1),
        );
        let cfg = AccessLogConfig {
            target: Target::File(path.to_str().unwrap().into()),
            format: Format::Text(parse("line\n").unwrap()),
            filter: None,
            otel: None,
        };
        let log = sinks.open(&cfg).unwrap();
        log.write(&Record::default());
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "");
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "line\n");
    }

    /// 64 KiB pending go out at once whatever the interval (Envoy's flush size), what is
    /// left goes out at exit, and past the bound lines are dropped and counted.
    #[tokio::test(start_paused = true)]
    async fn a_full_buffer_is_written_at_once_and_the_rest_at_exit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let store = Store::new();
        let sinks = Sinks::with_flush_interval(
            tokio::runtime::Handle::current(),
            store.clone(),
            Duration::from_secs(10),
        );
        let line = "x".repeat(1023) + "\n";
        let cfg = AccessLogConfig {
            target: Target::File(path.to_str().unwrap().into()),
            format: Format::Text(parse(&line).unwrap()),
            filter: None,
            otel: None,
        };
        let log = sinks.open(&cfg).unwrap();
        for _ in 0..64 {
            log.write(&Record::default());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 64 * 1024);
        log.write(&Record::default());
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 64 * 1024);
        sinks.flush();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 65 * 1024);

        // Nothing drains a sink that is not run: its bound holds.
        let sink = Sink {
            pending: Mutex::new(Vec::new()),
            out: Mutex::new(Box::new(std::io::sink())),
            wake: tokio::sync::Notify::new(),
            eager: false,
            flush_size: FLUSH_SIZE,
        };
        let taken = (0..MAX_PENDING / 1024 + 10)
            .filter(|_| sink.push(&line))
            .count();
        assert_eq!(taken, MAX_PENDING / 1024);
    }
}
