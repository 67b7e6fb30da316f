//! `/config_dump` in Envoy's `envoy.admin.v3.ConfigDump` shape, built from the typed
//! bootstrap and serialized as proto3 JSON with `@type` on every `Any`.
use std::time::SystemTime;

use envoy_types::pb::{
    envoy::{
        admin::v3::{
            BootstrapConfigDump, ClustersConfigDump, ConfigDump, ListenersConfigDump,
            RoutesConfigDump, ScopedRoutesConfigDump, SecretsConfigDump,
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

fn timestamp(t: SystemTime) -> Timestamp {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    Timestamp {
        seconds: d.as_secs() as i64,
        nanos: (d.subsec_millis() * 1_000_000) as i32,
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
