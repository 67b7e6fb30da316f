//! `/config_dump` in Envoy's `envoy.admin.v3.ConfigDump` shape, built from the typed
//! bootstrap and serialized as proto3 JSON with `@type` on every `Any`, with Envoy's
//! `include_eds`, `resource`, `mask` and `name_regex` (istioctl asks with `mask`).
use std::time::SystemTime;

use envoy_types::pb::{
    envoy::{
        admin::v3::{
            BootstrapConfigDump, ClustersConfigDump, ConfigDump, EndpointsConfigDump,
            ListenersConfigDump, RoutesConfigDump, ScopedRoutesConfigDump, SecretsConfigDump,
            clusters_config_dump::StaticCluster, listeners_config_dump::StaticListener,
            routes_config_dump::StaticRouteConfig,
        },
        config::{bootstrap::v3::Bootstrap, listener::v3::filter},
        extensions::filters::network::http_connection_manager::v3::{
            HttpConnectionManager, http_connection_manager::RouteSpecifier,
        },
    },
    google::protobuf::{Any, Timestamp},
};
use prost::{Message, Name};

use crate::config::proto;

fn pack<M: Message + Name>(m: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: m.encode_to_vec(),
    }
}

pub fn timestamp(t: SystemTime) -> Timestamp {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    Timestamp {
        seconds: d.as_secs() as i64,
        nanos: (d.subsec_millis() * 1_000_000) as i32,
    }
}

/// The bootstrap as loaded, kept encoded (a tenth of its rendered JSON, which is tens
/// of MB with thousands of clusters) and rendered when `/config_dump` asks, as Envoy
/// does.
#[derive(Debug, Clone)]
pub struct StaticDump {
    bootstrap: Vec<u8>,
    applied: SystemTime,
}

impl StaticDump {
    pub fn new(bootstrap: &Bootstrap, applied: SystemTime) -> Self {
        StaticDump {
            bootstrap: bootstrap.encode_to_vec(),
            applied,
        }
    }

    /// The dump's JSON (needs the descriptor pool, which the caller may release after).
    pub fn render(&self) -> String {
        let bootstrap = Bootstrap::decode(self.bootstrap.as_slice()).unwrap_or_default();
        render(&bootstrap, self.applied)
    }
}

/// Renders the config dump of a static bootstrap applied at `applied`.
pub fn render(bootstrap: &Bootstrap, applied: SystemTime) -> String {
    let at = Some(timestamp(applied));
    let res = bootstrap.static_resources.clone().unwrap_or_default();
    let clusters = ClustersConfigDump {
        static_clusters: res
            .clusters
            .iter()
            .map(|c| StaticCluster {
                cluster: Some(pack(c)),
                last_updated: at,
            })
            .collect(),
        ..Default::default()
    };
    let listeners = ListenersConfigDump {
        static_listeners: res
            .listeners
            .iter()
            .map(|l| StaticListener {
                listener: Some(pack(l)),
                last_updated: at,
            })
            .collect(),
        ..Default::default()
    };
    // Inline route configs of static listeners are listed as static route configs.
    let routes = RoutesConfigDump {
        static_route_configs: res
            .listeners
            .iter()
            .flat_map(|l| &l.filter_chains)
            .flat_map(|fc| &fc.filters)
            .filter_map(|f| match &f.config_type {
                Some(filter::ConfigType::TypedConfig(any)) => {
                    proto::unpack::<HttpConnectionManager>(any).ok()
                }
                _ => None,
            })
            .filter_map(|hcm| match hcm.route_specifier {
                Some(RouteSpecifier::RouteConfig(rc)) => Some(StaticRouteConfig {
                    route_config: Some(pack(&rc)),
                    last_updated: at,
                }),
                _ => None,
            })
            .collect(),
        ..Default::default()
    };
    let dump = ConfigDump {
        configs: vec![
            pack(&BootstrapConfigDump {
                bootstrap: Some(bootstrap.clone()),
                last_updated: at,
            }),
            pack(&clusters),
            pack(&listeners),
            pack(&ScopedRoutesConfigDump::default()),
            pack(&routes),
            pack(&SecretsConfigDump::default()),
        ],
    };
    serde_json::to_string_pretty(&proto::to_json(&dump)).unwrap_or_default()
}

/// The bootstrap's dump with the dynamic sections (`dynamic_active_clusters`,
/// `dynamic_listeners`, `dynamic_route_configs`, endpoints with `?include_eds`) and
/// each type's `version_info` filled in.
pub fn with_dynamic(static_dump: &str, dynamic: &crate::xds::state::Dump) -> String {
    let Ok(mut dump) = serde_json::from_str::<serde_json::Value>(static_dump) else {
        return static_dump.to_owned();
    };
    let parts = [
        (
            ClustersConfigDump::type_url(),
            proto::to_json(&dynamic.clusters),
        ),
        (
            ListenersConfigDump::type_url(),
            proto::to_json(&dynamic.listeners),
        ),
        (
            RoutesConfigDump::type_url(),
            proto::to_json(&dynamic.routes),
        ),
    ];
    let Some(configs) = dump.get_mut("configs").and_then(|c| c.as_array_mut()) else {
        return static_dump.to_owned();
    };
    for (ty, part) in parts {
        let ty = serde_json::Value::String(ty);
        if let (Some(slot), Some(fields)) = (
            configs.iter_mut().find(|c| c.get("@type") == Some(&ty)),
            part.as_object(),
        ) && let Some(obj) = slot.as_object_mut()
        {
            for (k, v) in fields {
                obj.insert(k.clone(), v.clone());
            }
        }
    }
    if let Some(eds) = &dynamic.endpoints {
        let at = configs
            .iter()
            .position(|c| {
                c.get("@type").and_then(|t| t.as_str())
                    == Some("type.googleapis.com/envoy.admin.v3.ClustersConfigDump")
            })
            .map_or(configs.len(), |i| i + 1);
        let mut eds = proto::to_json(eds);
        if let Some(obj) = eds.as_object_mut() {
            obj.insert("@type".into(), EndpointsConfigDump::type_url().into());
        }
        configs.insert(at, eds);
    }
    serde_json::to_string_pretty(&dump).unwrap_or_default()
}

/// The dump with the SDS secrets in use (`SecretsConfigDump`).
fn with_secrets(body: &str, secrets: &SecretsConfigDump) -> String {
    if secrets == &SecretsConfigDump::default() {
        return body.to_owned();
    }
    let Ok(mut dump) = serde_json::from_str::<serde_json::Value>(body) else {
        return body.to_owned();
    };
    let ty = serde_json::Value::String(SecretsConfigDump::type_url());
    if let Some(slot) = dump
        .get_mut("configs")
        .and_then(|c| c.as_array_mut())
        .and_then(|c| c.iter_mut().find(|c| c.get("@type") == Some(&ty)))
        && let serde_json::Value::Object(mut fields) = proto::to_json(secrets)
    {
        fields.insert("@type".into(), ty);
        *slot = serde_json::Value::Object(fields);
    }
    serde_json::to_string_pretty(&dump).unwrap_or_default()
}

/// `GET /config_dump` with its query.
pub fn handle(state: &super::State, query: &super::Query) -> super::Reply {
    use http::StatusCode;
    let rendered = state.config_dump.render();
    // `include_eds` is a presence flag in Envoy (`=false` includes them too).
    let body = match state.xds.get() {
        Some(x) => with_dynamic(&rendered, &x.dump(query.has("include_eds"))),
        None => rendered,
    };
    let body = with_secrets(&body, &state.clusters.secrets().dump());
    let out = select(
        &body,
        query.get("resource"),
        query.get("mask"),
        query.get("name_regex"),
    );
    // Nothing else keeps the descriptor pool (xDS checks use the allow-list schema).
    proto::release_pool();
    // Rendering a large config is a burst of allocations: give them back once the
    // response has gone.
    crate::memory::release_later();
    match out {
        Ok(json) => super::Reply::new(StatusCode::OK, "application/json", json),
        Err((code, msg)) => super::Reply::new(code, "text/plain", msg),
    }
}

/// The element type of each repeated section, as `?resource=` lists them.
const SECTIONS: &[(&str, &str, &str)] = &[
    ("BootstrapConfigDump", "", ""),
    ("ClustersConfigDump", "static_clusters", "StaticCluster"),
    (
        "ClustersConfigDump",
        "dynamic_active_clusters",
        "DynamicCluster",
    ),
    (
        "ClustersConfigDump",
        "dynamic_warming_clusters",
        "DynamicCluster",
    ),
    (
        "EndpointsConfigDump",
        "static_endpoint_configs",
        "StaticEndpointConfig",
    ),
    (
        "EndpointsConfigDump",
        "dynamic_endpoint_configs",
        "DynamicEndpointConfig",
    ),
    ("ListenersConfigDump", "static_listeners", "StaticListener"),
    (
        "ListenersConfigDump",
        "dynamic_listeners",
        "DynamicListener",
    ),
    (
        "ScopedRoutesConfigDump",
        "inline_scoped_route_configs",
        "InlineScopedRouteConfigs",
    ),
    (
        "ScopedRoutesConfigDump",
        "dynamic_scoped_route_configs",
        "DynamicScopedRouteConfigs",
    ),
    (
        "RoutesConfigDump",
        "static_route_configs",
        "StaticRouteConfig",
    ),
    (
        "RoutesConfigDump",
        "dynamic_route_configs",
        "DynamicRouteConfig",
    ),
    ("SecretsConfigDump", "static_secrets", "StaticSecret"),
    (
        "SecretsConfigDump",
        "dynamic_active_secrets",
        "DynamicSecret",
    ),
    (
        "SecretsConfigDump",
        "dynamic_warming_secrets",
        "DynamicSecret",
    ),
];

type Failure = (http::StatusCode, String);

/// Applies `name_regex`, then `resource`, then `mask` to a rendered dump.
pub fn select(
    dump: &str,
    resource: Option<&str>,
    mask: Option<&str>,
    name_regex: Option<&str>,
) -> Result<String, Failure> {
    use http::StatusCode;
    if resource.is_none() && mask.is_none() && name_regex.is_none() {
        return Ok(dump.to_owned());
    }
    let mut root: serde_json::Value = serde_json::from_str(dump)
        .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let configs = root
        .get_mut("configs")
        .and_then(|c| c.as_array_mut())
        .map(std::mem::take)
        .unwrap_or_default();
    let mut configs = configs;
    if let Some(re) = name_regex {
        let re = regex::Regex::new(&format!("^(?:{re})$")).map_err(|e| {
            (
                StatusCode::BAD_REQUEST,
                format!("INVALID_ARGUMENT: Error while parsing name_regex from {re}: {e}"),
            )
        })?;
        for c in &mut configs {
            let Some(obj) = c.as_object_mut() else {
                continue;
            };
            for (key, v) in obj.iter_mut() {
                if let Some(items) = v.as_array_mut()
                    && SECTIONS.iter().any(|(_, s, _)| s == key)
                {
                    items.retain(|item| name_of(item).is_some_and(|n| re.is_match(n)));
                }
            }
        }
    }
    let paths: Vec<&str> = mask
        .map(|m| m.split(',').filter(|p| !p.is_empty()).collect())
        .unwrap_or_default();
    if let Some(res) = resource {
        let Some((ty, _, elem)) = SECTIONS.iter().find(|(_, s, _)| *s == res && !s.is_empty())
        else {
            return Err((
                StatusCode::NOT_FOUND,
                format!("{res} not found in config dump"),
            ));
        };
        let elem_type = format!("envoy.admin.v3.{ty}.{elem}");
        let items: Vec<serde_json::Value> = configs
            .iter()
            .filter_map(|c| c.get(res).and_then(|v| v.as_array()))
            .flatten()
            .cloned()
            .collect();
        if items.is_empty() {
            return Ok("{}\n".into());
        }
        if !paths.is_empty() && !paths.iter().all(|p| valid_path(&elem_type, p)) {
            return Err((
                StatusCode::BAD_REQUEST,
                format!(
                    "FieldMask paths: \"{}\"\n could not be successfully used.",
                    paths.join(",")
                ),
            ));
        }
        let out: Vec<serde_json::Value> = items
            .into_iter()
            .map(|mut item| {
                if !paths.is_empty() {
                    item = masked(&item, &paths);
                }
                if let Some(obj) = item.as_object_mut() {
                    let mut with_type = serde_json::Map::new();
                    with_type.insert(
                        "@type".into(),
                        format!("type.googleapis.com/{elem_type}").into(),
                    );
                    with_type.extend(std::mem::take(obj));
                    *obj = with_type;
                }
                item
            })
            .collect();
        return Ok(pretty(&serde_json::json!({ "configs": out })));
    }
    if !paths.is_empty() {
        configs.retain(|c| {
            let ty = c
                .get("@type")
                .and_then(|t| t.as_str())
                .map(|t| proto::type_name(t).to_owned())
                .unwrap_or_default();
            paths.iter().all(|p| valid_path(&ty, p))
        });
        if configs.is_empty() {
            return Err((
                StatusCode::BAD_REQUEST,
                format!(
                    "FieldMask {} could not be successfully applied to any configs.",
                    paths.join(",")
                ),
            ));
        }
        configs = configs
            .iter()
            .map(|c| {
                let mut m = masked(c, &paths);
                if let (Some(obj), Some(t)) = (m.as_object_mut(), c.get("@type")) {
                    let mut with_type = serde_json::Map::new();
                    with_type.insert("@type".into(), t.clone());
                    with_type.extend(std::mem::take(obj));
                    *obj = with_type;
                }
                m
            })
            .collect();
    }
    Ok(pretty(&serde_json::json!({ "configs": configs })))
}

fn pretty(v: &serde_json::Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

/// The name of one listed resource (a cluster's, listener's, route configuration's …).
fn name_of(item: &serde_json::Value) -> Option<&str> {
    for (outer, inner) in [
        ("cluster", "name"),
        ("listener", "name"),
        ("route_config", "name"),
        ("endpoint_config", "cluster_name"),
        ("secret", "name"),
    ] {
        if let Some(n) = item
            .get(outer)
            .and_then(|o| o.get(inner))
            .and_then(|n| n.as_str())
        {
            return Some(n);
        }
    }
    if let Some(n) = item.get("name").and_then(|n| n.as_str()) {
        return Some(n);
    }
    // A dynamic listener keeps its name beside the active/warming states.
    item.get("active_state")
        .and_then(|s| s.get("listener"))
        .and_then(|l| l.get("name"))
        .and_then(|n| n.as_str())
}

/// Whether `path` (`a.b.c`) names fields of the message type `ty`.
fn valid_path(ty: &str, path: &str) -> bool {
    let Some(mut desc) = proto::descriptor(ty) else {
        return false;
    };
    let mut parts = path.split('.').peekable();
    while let Some(p) = parts.next() {
        let Some(f) = desc.get_field_by_name(p) else {
            return false;
        };
        if parts.peek().is_none() {
            return true;
        }
        match f.kind() {
            // An Any (a dumped cluster, listener …) is masked by what it holds, which
            // only the data says.
            prost_reflect::Kind::Message(m) if m.full_name() == "google.protobuf.Any" => {
                return !f.is_list();
            }
            prost_reflect::Kind::Message(m) if !f.is_list() && !f.is_map() => desc = m,
            _ => return false,
        }
    }
    true
}

/// Keeps only the fields `paths` name (a FieldMask over proto3 JSON).
fn masked(v: &serde_json::Value, paths: &[&str]) -> serde_json::Value {
    let mut out = serde_json::Map::new();
    for p in paths {
        let mut src = v;
        let mut found = true;
        let parts: Vec<&str> = p.split('.').collect();
        for part in &parts {
            match src.get(*part) {
                Some(next) => src = next,
                None => {
                    found = false;
                    break;
                }
            }
        }
        if !found {
            continue;
        }
        let Some((last, ancestors)) = parts.split_last() else {
            continue;
        };
        let mut dst = Some(&mut out);
        for part in ancestors {
            // A path under one already kept whole (`a` then `a.b`) is inside it.
            dst = dst.and_then(|d| {
                d.entry(part.to_string())
                    .or_insert_with(|| serde_json::Value::Object(Default::default()))
                    .as_object_mut()
            });
        }
        if let Some(dst) = dst {
            dst.insert((*last).to_owned(), src.clone());
        }
    }
    serde_json::Value::Object(out)
}

#[cfg(test)]
mod select_tests {
    use super::*;

    fn dump() -> String {
        serde_json::json!({"configs": [
            {"@type": "type.googleapis.com/envoy.admin.v3.BootstrapConfigDump",
             "bootstrap": {"node": {"id": "n", "cluster": "c"}, "admin": {}}},
            {"@type": "type.googleapis.com/envoy.admin.v3.ClustersConfigDump",
             "static_clusters": [
                {"cluster": {"@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster", "name": "xds-grpc", "type": "STATIC"}, "last_updated": "t"},
                {"cluster": {"@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster", "name": "agent"}, "last_updated": "t"}]},
            {"@type": "type.googleapis.com/envoy.admin.v3.ListenersConfigDump"},
            {"@type": "type.googleapis.com/envoy.admin.v3.SecretsConfigDump"}
        ]})
        .to_string()
    }

    fn json(s: &str) -> serde_json::Value {
        serde_json::from_str(s).unwrap()
    }

    #[test]
    fn resource_mask_and_name_regex_as_envoy() {
        let d = dump();
        let out = json(&select(&d, Some("static_clusters"), Some("cluster.name"), None).unwrap());
        assert_eq!(
            out,
            serde_json::json!({"configs": [
                {"@type": "type.googleapis.com/envoy.admin.v3.ClustersConfigDump.StaticCluster", "cluster": {"name": "xds-grpc"}},
                {"@type": "type.googleapis.com/envoy.admin.v3.ClustersConfigDump.StaticCluster", "cluster": {"name": "agent"}}]})
        );
        let out = json(&select(&d, Some("static_clusters"), None, Some(".*grpc.*")).unwrap());
        assert_eq!(out["configs"].as_array().unwrap().len(), 1);
        assert_eq!(
            select(&d, Some("dynamic_active_clusters"), None, None).unwrap(),
            "{}\n"
        );
        assert_eq!(
            select(&d, Some("foo"), None, None).unwrap_err(),
            (
                http::StatusCode::NOT_FOUND,
                "foo not found in config dump".into()
            )
        );
        // istioctl's form: a mask without a resource keeps the dumps it fits.
        let out = json(&select(&d, None, Some("bootstrap"), None).unwrap());
        assert_eq!(out["configs"].as_array().unwrap().len(), 1);
        assert_eq!(out["configs"][0]["bootstrap"]["node"]["id"], "n");
        let out = json(
            &select(
                &d,
                None,
                Some("dynamic_active_secrets,dynamic_warming_secrets"),
                None,
            )
            .unwrap(),
        );
        assert_eq!(
            out,
            serde_json::json!({"configs": [{"@type": "type.googleapis.com/envoy.admin.v3.SecretsConfigDump"}]})
        );
        assert_eq!(
            select(&d, None, Some("static_clusters,static_listeners"), None)
                .unwrap_err()
                .0,
            http::StatusCode::BAD_REQUEST
        );
        assert!(select(&d, None, None, Some("([")).is_err());
    }
}
