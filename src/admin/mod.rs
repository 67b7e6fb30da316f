//! The admin (15000), Prometheus stats (15090) and health (15021) servers. They run on
//! the control runtime, never on a traffic worker. Endpoints answer in Envoy's formats:
//! pilot-agent and istioctl parse them.
mod certs;
mod clusters;
pub mod config_dump;
mod server_info;
mod stats;

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::Arc,
    time::{Instant, SystemTime},
};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::{net::TcpListener, sync::mpsc};

pub use self::server_info::{ServerInfo, version};
use crate::{
    readiness::Readiness,
    runtime::Runtime,
    telemetry::{
        access_log::{AccessLog, Record},
        stats::Store,
    },
    upstream::ClusterManager,
};

/// Which endpoints a server exposes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Admin,
    Stats,
    Health,
}

/// Requests the admin makes of the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// `POST /quitquitquit`: exit now.
    Quit,
    /// `POST /drain_listeners`: drain the listeners (all, or the inbound ones), at once
    /// or gracefully over the drain time; the process keeps running.
    DrainListeners { inbound_only: bool, graceful: bool },
}

#[derive(Debug)]
pub struct State {
    pub store: Arc<Store>,
    pub readiness: Arc<Readiness>,
    pub clusters: Arc<ClusterManager>,
    /// Notified by each `/stats` request under `stats_flush_on_admin`.
    pub stats_flush: Option<Arc<tokio::sync::Notify>>,
    /// The bootstrap, for `/config_dump` (its static parts).
    pub config_dump: config_dump::StaticDump,
    /// The dynamic config, when the bootstrap has `dynamic_resources`.
    pub xds: std::sync::OnceLock<Arc<crate::xds::Handle>>,
    pub listeners: Arc<crate::listener::ListenerManager>,
    pub commands: mpsc::UnboundedSender<Command>,
    pub server: ServerInfo,
    pub runtime: Arc<Runtime>,
    /// `admin.access_log`: one line per admin request.
    pub access_logs: Vec<AccessLog>,
}

/// Serves `role`'s endpoints on `listener` until the process exits.
pub async fn serve(listener: TcpListener, role: Role, state: Arc<State>) {
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            continue;
        };
        let local = stream.local_addr().ok();
        let state = state.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(respond(role, &state, req, peer, local)) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    crate::listener::bind(addr, false)
}

/// Answers one request, and logs it when `admin.access_log` asks.
fn respond(
    role: Role,
    state: &State,
    req: Request<Incoming>,
    peer: SocketAddr,
    local: Option<SocketAddr>,
) -> Response<Full<Bytes>> {
    let started = Instant::now();
    let record = (!state.access_logs.is_empty() && role == Role::Admin).then(|| Record {
        start: Some(SystemTime::now()),
        method: Some(req.method().to_string()),
        path: req.uri().path_and_query().map(|p| p.to_string()),
        authority: req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_owned),
        protocol: Some("HTTP/1.1"),
        request_headers: Some(req.headers().clone()),
        downstream_remote: Some(peer),
        downstream_local: local,
        ..Default::default()
    });
    let reply = handle(role, state, &req);
    if let Some(mut r) = record {
        r.response_code = reply.status.as_u16();
        r.bytes_sent = reply.body.len() as u64;
        r.duration = started.elapsed();
        for log in &state.access_logs {
            log.write(&r);
        }
    }
    reply.into_response()
}

/// Endpoints that change state: Envoy 1.40 answers anything but POST with 405.
const POST_ONLY: &[&str] = &[
    "/cpuprofiler",
    "/drain_listeners",
    "/healthcheck/fail",
    "/healthcheck/ok",
    "/heapprofiler",
    "/logging",
    "/quitquitquit",
    "/reopen_logs",
    "/reset_counters",
    "/runtime_modify",
];

fn handle<B>(role: Role, state: &State, req: &Request<B>) -> Reply {
    let path = req.uri().path();
    let query = Query::parse(req.uri().query().unwrap_or(""));
    if role == Role::Admin && POST_ONLY.contains(&path) && req.method() != Method::POST {
        tracing::error!(
            "admin path \"{path}\" mutates state, method={} rather than POST",
            req.method()
        );
        return Reply::text(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("Method {} not allowed, POST required.", req.method()),
        );
    }
    match (role, path) {
        (Role::Health, "/healthz/ready") | (Role::Admin, "/ready") => {
            let st = state.readiness.state();
            let code = if state.readiness.is_ready() {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            Reply::text(code, format!("{}\n", st.as_str()))
        }
        (Role::Stats, "/stats/prometheus") | (Role::Admin, "/stats" | "/stats/prometheus") => {
            if let Some(flush) = &state.stats_flush {
                flush.notify_one();
            }
            stats::handle(&state.store, path, &query)
        }
        (Role::Admin, "/config_dump") => config_dump::handle(state, &query),
        (Role::Admin, "/listeners") => listeners(state, &query),
        (Role::Admin, "/clusters") => clusters::handle(&state.clusters, &query),
        (Role::Admin, "/server_info") => Reply::new(
            StatusCode::OK,
            "application/json",
            server_info::render(state),
        ),
        (Role::Admin, "/certs") => Reply::new(
            StatusCode::OK,
            "application/json",
            certs::render(state.clusters.secrets()),
        ),
        (Role::Admin, "/runtime") => Reply::new(
            StatusCode::OK,
            "application/json",
            state.runtime.render_json(),
        ),
        (Role::Admin, "/runtime_modify") => {
            state.runtime.modify(query.pairs());
            Reply::text(StatusCode::OK, "OK\n".into())
        }
        (Role::Admin, "/hot_restart_version") => Reply::text(StatusCode::OK, "disabled".into()),
        (Role::Admin, "/memory") => Reply::new(
            StatusCode::OK,
            "application/json",
            crate::memory::usage().to_json(),
        ),
        (Role::Admin, "/logging") => match crate::logging::apply_admin(query.pairs()) {
            Ok(listing) => Reply::text(StatusCode::OK, listing),
            Err(e) => Reply::text(StatusCode::BAD_REQUEST, e),
        },
        (Role::Admin, "/quitquitquit") => {
            let _ = state.commands.send(Command::Quit);
            Reply::text(StatusCode::OK, "OK\n".into())
        }
        (Role::Admin, "/healthcheck/fail") => {
            state.readiness.set_failed(true);
            Reply::text(StatusCode::OK, "OK\n".into())
        }
        (Role::Admin, "/healthcheck/ok") => {
            state.readiness.set_failed(false);
            Reply::text(StatusCode::OK, "OK\n".into())
        }
        (Role::Admin, "/drain_listeners") => {
            let _ = state.commands.send(Command::DrainListeners {
                inbound_only: query.has("inboundonly"),
                graceful: query.has("graceful"),
            });
            Reply::text(StatusCode::OK, "OK\n".into())
        }
        (Role::Admin, "/" | "/help") => Reply::text(StatusCode::OK, HELP.into()),
        (Role::Admin, _) => Reply::text(
            StatusCode::NOT_FOUND,
            format!("invalid path. admin commands are:\n{HELP}"),
        ),
        _ => Reply::text(StatusCode::NOT_FOUND, String::new()),
    }
}

const HELP: &str = "admin commands are:
  /: Admin home page
  /certs: print certs on machine
  /clusters: upstream cluster status
      format: File format to use; One of (text, json)
  /config_dump: dump current Envoy configs (experimental)
      resource: The resource to dump
      mask: The mask to apply. When both resource and mask are specified, the mask is applied to every element in the desired repeated field so that only a subset of fields are returned. The mask is parsed as a ProtobufWkt::FieldMask
      name_regex: Dump only the currently loaded configurations whose names match the specified regex. Can be used with both resource and mask query parameters.
      include_eds: Dump currently loaded configuration including EDS. See the response definition for more information
  /drain_listeners (POST): drain listeners
      graceful: When draining listeners, enter a graceful drain period prior to closing listeners. This behaviour and duration is configurable via server options or CLI
      skip_exit: When draining listeners, do not exit after the drain period. This must be used with graceful
      inboundonly: Drains all inbound listeners. traffic_direction field in envoy_v3_api_msg_config.listener.v3.Listener is used to determine whether a listener is inbound or outbound.
  /healthcheck/fail (POST): cause the server to fail health checks
  /healthcheck/ok (POST): cause the server to pass health checks
  /help: print out list of admin commands
  /hot_restart_version: print the hot restart compatibility version
  /listeners: print listener info
      format: File format to use; One of (text, json)
  /logging (POST): query/change logging levels
      paths: Change multiple logging levels by setting to <logger_name1>:<desired_level1>,<logger_name2>:<desired_level2>. If fine grain logging is enabled, use __FILE__ or a glob experision as the logger name. For example, source/common*:warning
      level: desired logging level, this will change all loggers's level; One of (, trace, debug, info, warning, error, critical, off)
  /memory: print current allocation/heap usage
  /quitquitquit (POST): exit the server
  /ready: print server state, return 200 if LIVE, otherwise return 503
  /runtime: print runtime values
  /runtime_modify (POST): Adds or modifies runtime values as passed in query parameters. To delete a previously added key, use an empty string as the value. Note that deletion only applies to overrides added via this endpoint; values loaded from disk can be modified via override but not deleted. E.g. ?key1=value1&key2=value2...
  /server_info: print server version/status information
  /stats: print server stats
      usedonly: Only include stats that have been written by system since restart
      filter: Regular expression (Google re2) for filtering stats
      format: Format to use; One of (html, active-html, text, json)
  /stats/prometheus: print server stats in prometheus format
      usedonly: Only include stats that have been written by system since restart
      filter: Regular expression (Google re2) for filtering stats
";

fn listeners(state: &State, query: &Query) -> Reply {
    let bound = state.listeners.bound();
    if query.get("format") == Some("json") {
        let statuses: Vec<serde_json::Value> = bound
            .iter()
            .map(|(n, a)| {
                serde_json::json!({
                    "name": n,
                    "local_address": { "socket_address": {
                        "address": a.ip().to_string(),
                        "port_value": a.port(),
                    }},
                })
            })
            .collect();
        return Reply::new(
            StatusCode::OK,
            "application/json",
            serde_json::to_string_pretty(&serde_json::json!({ "listener_statuses": statuses }))
                .unwrap_or_default(),
        );
    }
    Reply::text(
        StatusCode::OK,
        bound.iter().map(|(n, a)| format!("{n}::{a}\n")).collect(),
    )
}

/// One admin answer.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    content_type: &'static str,
    pub body: Bytes,
}

impl Reply {
    fn new(status: StatusCode, content_type: &'static str, body: String) -> Self {
        Reply {
            status,
            content_type,
            body: Bytes::from(body),
        }
    }

    fn text(status: StatusCode, body: String) -> Self {
        Reply::new(status, "text/plain; charset=UTF-8", body)
    }

    fn into_response(self) -> Response<Full<Bytes>> {
        let mut r = Response::new(Full::new(self.body));
        *r.status_mut() = self.status;
        let h = r.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static(self.content_type),
        );
        h.insert(
            header::CACHE_CONTROL,
            header::HeaderValue::from_static("no-cache, max-age=0"),
        );
        h.insert(
            "x-content-type-options",
            header::HeaderValue::from_static("nosniff"),
        );
        r
    }
}

/// An admin query string: `a&b=c`, percent-encoded or raw (pilot-agent sends its stats
/// regexes raw).
#[derive(Debug, Default)]
pub struct Query(Vec<(String, String)>);

impl Query {
    pub fn parse(q: &str) -> Self {
        Query(
            q.split('&')
                .filter(|p| !p.is_empty())
                .map(|p| {
                    let (k, v) = p.split_once('=').unwrap_or((p, ""));
                    (decode(k), decode(v))
                })
                .collect(),
        )
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn has(&self, key: &str) -> bool {
        self.0.iter().any(|(k, _)| k == key)
    }

    pub fn pairs(&self) -> &[(String, String)] {
        &self.0
    }
}

/// Percent-decoding (and `+` as space, as query strings have it).
fn decode(s: &str) -> String {
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_decode_raw_and_percent_encoded() {
        let q = Query::parse(r"usedonly&filter=^(server\.state|x)$&a=%5E%28b%29&c=1+2&d=%zz");
        assert!(q.has("usedonly"));
        assert_eq!(q.get("usedonly"), Some(""));
        assert_eq!(q.get("filter"), Some(r"^(server\.state|x)$"));
        assert_eq!(q.get("a"), Some("^(b)"));
        assert_eq!(q.get("c"), Some("1 2"));
        assert_eq!(q.get("d"), Some("%zz"));
        assert_eq!(Query::parse("x=%4").get("x"), Some("%4"));
    }
}
