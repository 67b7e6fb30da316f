//! `/stats` (text, `format=json`, `format=prometheus`) and `/stats/prometheus`, with
//! Envoy's `usedonly` and `filter` (a regex searched in the flat name). pilot-agent's
//! readiness probe reads `/stats?usedonly&filter=^(server\.state|listener_manager\.workers_started)`.
use http::StatusCode;

use super::{Query, Reply};
use crate::telemetry::stats::{Filter, Store};

/// The stats listing `path` asks for.
pub fn handle(store: &Store, path: &str, query: &Query) -> Reply {
    let filter = match filter(query) {
        Ok(f) => f,
        Err(e) => return Reply::text(StatusCode::BAD_REQUEST, e),
    };
    if path == "/stats/prometheus" {
        return prometheus(store, &filter);
    }
    match query.get("format") {
        None | Some("text") => Reply::text(StatusCode::OK, store.render_text(&filter)),
        Some("json") => Reply::new(
            StatusCode::OK,
            "application/json",
            store.render_json(&filter),
        ),
        Some("prometheus") => prometheus(store, &filter),
        Some(_) => Reply::text(
            StatusCode::BAD_REQUEST,
            "usage: /stats?format=(html|active-html|json|prometheus|text)\n\n".into(),
        ),
    }
}

fn prometheus(store: &Store, filter: &Filter) -> Reply {
    Reply::text(StatusCode::OK, store.render_prometheus(filter))
}

fn filter(query: &Query) -> Result<Filter, String> {
    let regex = match query.get("filter") {
        Some(f) if !f.is_empty() => {
            Some(regex::Regex::new(f).map_err(|e| format!("Invalid re2 regex: {e}"))?)
        }
        _ => None,
    };
    Ok(Filter {
        used_only: query.has("usedonly"),
        regex,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(store: &Store, target: &str) -> (StatusCode, String) {
        let (path, q) = target.split_once('?').unwrap_or((target, ""));
        let r = handle(store, path, &Query::parse(q));
        (r.status, String::from_utf8(r.body.to_vec()).unwrap())
    }

    /// pilot-agent's two probes, as it sends them (not percent-encoded).
    #[test]
    fn the_agents_readiness_queries() {
        let store = Store::new();
        let state = store.gauge("server.state".into(), "envoy_server_state", &[]);
        let workers = store.gauge(
            "listener_manager.workers_started".into(),
            "envoy_listener_manager_workers_started",
            &[],
        );
        let cds = store.counter(
            "cluster_manager.cds.update_success".into(),
            "envoy_cluster_manager_cds_update_success",
            &[],
        );
        store.counter(
            "listener_manager.lds.update_success".into(),
            "envoy_listener_manager_lds_update_success",
            &[],
        );
        let ready = r"^(server\.state|listener_manager\.workers_started)";
        let config =
            r"^(cluster_manager\.cds|listener_manager\.lds)\.(update_success|update_rejected)$";
        // Nothing written yet: `usedonly` lists nothing, and that is a 200.
        assert_eq!(
            body(&store, &format!("/stats?usedonly&filter={config}")),
            (StatusCode::OK, String::new())
        );
        state.set(0);
        workers.set(1);
        cds.inc();
        assert_eq!(
            body(&store, &format!("/stats?usedonly&filter={ready}")).1,
            "listener_manager.workers_started: 1\nserver.state: 0\n"
        );
        assert_eq!(
            body(&store, &format!("/stats?usedonly&filter={config}")).1,
            "cluster_manager.cds.update_success: 1\n"
        );
        // Percent-encoded, the same.
        assert_eq!(
            body(&store, "/stats?usedonly&filter=%5Eserver%5C.state").1,
            "server.state: 0\n"
        );
        assert_eq!(
            body(&store, "/stats?filter=workers_started&format=json").1,
            r#"{"stats":[{"name":"listener_manager.workers_started","value":1}]}"#
        );
        let (code, err) = body(&store, "/stats?filter=[");
        assert_eq!(code, StatusCode::BAD_REQUEST);
        assert!(err.starts_with("Invalid re2 regex: "), "{err}");
    }
}
