//! The admin (15000), Prometheus stats (15090) and health (15021) servers. They run on
//! the control runtime, never on a traffic worker.
pub mod config_dump;

use std::{convert::Infallible, net::SocketAddr, sync::Arc};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::{net::TcpListener, sync::mpsc};

use crate::{readiness::Readiness, telemetry::stats::Store, upstream::ClusterManager};

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
    /// `POST /drain_listeners`: stop accepting and drain.
    Drain,
}

#[derive(Debug)]
pub struct State {
    pub store: Arc<Store>,
    pub readiness: Arc<Readiness>,
    pub clusters: Arc<ClusterManager>,
    /// The bootstrap, for `/config_dump` (its static parts).
    pub config_dump: config_dump::StaticDump,
    /// The dynamic config, when the bootstrap has `dynamic_resources`.
    pub xds: std::sync::OnceLock<Arc<crate::xds::Handle>>,
    pub listeners: Arc<crate::listener::ListenerManager>,
    pub commands: mpsc::UnboundedSender<Command>,
}

/// Serves `role`'s endpoints on `listener` until the process exits.
pub async fn serve(listener: TcpListener, role: Role, state: Arc<State>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handle(role, &state, req)) }
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

fn handle(role: Role, state: &State, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    let query = req.uri().query().unwrap_or("");
    let post = req.method() == Method::POST;
    match (role, path) {
        (Role::Health, "/healthz/ready") | (Role::Admin, "/ready") => {
            let st = state.readiness.state();
            let code = if state.readiness.is_ready() {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            text(code, format!("{}\n", st.as_str()))
        }
        (Role::Stats | Role::Admin, "/stats/prometheus") => prometheus(state),
        (Role::Admin, "/stats") if query.contains("format=prometheus") => prometheus(state),
        (Role::Admin, "/stats") if query.contains("format=json") => json_stats(state),
        (Role::Admin, "/stats") => text(StatusCode::OK, state.store.render_text()),
        (Role::Admin, "/config_dump") => {
            let rendered = state.config_dump.render();
            let body = match state.xds.get() {
                Some(x) => {
                    config_dump::with_dynamic(&rendered, &x.dump(query.contains("include_eds")))
                }
                None => rendered,
            };
            // Nothing else keeps the descriptor pool (xDS checks use the allow-list schema).
            crate::config::proto::release_pool();
            // Rendering a large config is a burst of allocations: give them back once
            // the response has gone.
            crate::memory::release_later();
            respond(StatusCode::OK, "application/json", body)
        }
        (Role::Admin, "/listeners") => text(
            StatusCode::OK,
            state
                .listeners
                .bound()
                .iter()
                .map(|(n, a)| format!("{n}::{a}\n"))
                .collect(),
        ),
        (Role::Admin, "/clusters") => text(StatusCode::OK, clusters(&state.clusters)),
        (Role::Admin, "/memory") => respond(
            StatusCode::OK,
            "application/json",
            crate::memory::usage().to_json(),
        ),
        (
            Role::Admin,
            "/quitquitquit" | "/healthcheck/fail" | "/healthcheck/ok" | "/drain_listeners",
        ) if !post => text(
            StatusCode::METHOD_NOT_ALLOWED,
            "This endpoint requires POST\n".into(),
        ),
        (Role::Admin, "/quitquitquit") => {
            let _ = state.commands.send(Command::Quit);
            text(StatusCode::OK, "OK\n".into())
        }
        (Role::Admin, "/healthcheck/fail") => {
            state.readiness.set_failed(true);
            text(StatusCode::OK, "OK\n".into())
        }
        (Role::Admin, "/healthcheck/ok") => {
            state.readiness.set_failed(false);
            text(StatusCode::OK, "OK\n".into())
        }
        (Role::Admin, "/drain_listeners") => {
            let _ = state.commands.send(Command::Drain);
            text(StatusCode::OK, "OK\n".into())
        }
        (Role::Admin, "/") => text(StatusCode::OK, HELP.into()),
        _ => text(StatusCode::NOT_FOUND, "invalid path\n".into()),
    }
}

const HELP: &str = "admin commands are:
  /: this help
  /clusters: upstream cluster status
  /config_dump: dump current Envoy configs
  /drain_listeners (POST): drain listeners
  /healthcheck/fail (POST): cause the server to fail health checks
  /healthcheck/ok (POST): cause the server to pass health checks
  /listeners: print listener info
  /memory: print current allocation/heap usage
  /quitquitquit (POST): exit the server
  /ready: print server state, return 200 if LIVE, otherwise return 503
  /stats: print server stats (?format=json, ?format=prometheus)
  /stats/prometheus: print server stats in prometheus format
";

fn prometheus(state: &State) -> Response<Full<Bytes>> {
    respond(
        StatusCode::OK,
        "text/plain; version=0.0.4",
        state.store.render_prometheus(),
    )
}

fn json_stats(state: &State) -> Response<Full<Bytes>> {
    let stats: Vec<serde_json::Value> = state
        .store
        .render_text()
        .lines()
        .filter_map(|l| l.rsplit_once(": "))
        .map(
            |(name, v)| serde_json::json!({ "name": name, "value": v.parse::<i64>().unwrap_or(0) }),
        )
        .collect();
    respond(
        StatusCode::OK,
        "application/json",
        serde_json::json!({ "stats": stats }).to_string(),
    )
}

/// Envoy's `/clusters` text: `cluster::host::field::value` lines.
fn clusters(cm: &ClusterManager) -> String {
    let all = cm.snapshot();
    let mut names: Vec<_> = all.values().collect();
    names.sort_by(|a, b| a.name().cmp(b.name()));
    let mut out = String::new();
    for c in names {
        let n = c.name();
        out.push_str(&format!(
            "{n}::observability_name::{n}\n{n}::added_via_api::false\n"
        ));
        for h in c.hosts().iter() {
            let a = h.addr;
            out.push_str(&format!(
                "{n}::{a}::health_flags::healthy\n{n}::{a}::weight::1\n"
            ));
        }
    }
    out
}

fn text(code: StatusCode, body: String) -> Response<Full<Bytes>> {
    respond(code, "text/plain; charset=UTF-8", body)
}

fn respond(code: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = code;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    r
}
