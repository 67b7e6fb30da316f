//! `/config_dump` in Envoy's `envoy.admin.v3.ConfigDump` shape, built from the typed
//! bootstrap and serialized as proto3 JSON with `@type` on every `Any`.
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
