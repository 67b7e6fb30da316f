//! Istio's own extensions, which only Istio's build of Envoy (istio-proxy) has:
//! their descriptors (`protos.rs`, compiled into the config decoder's pool by
//! `build.rs`) and what each does.
pub mod alpn;
pub mod exchange;
pub mod peer;
pub mod peer_metadata;
pub mod stats;

#[cfg(test)]
mod tests {
    use crate::config::{proto, typed_struct};

    /// A listener whose HCM carries `config` (proto3 JSON with `@type`) as its first
    /// HTTP filter, decoded and with its TypedStructs resolved.
    fn decode(config: serde_json::Value) -> Result<serde_json::Value, String> {
        let desc = proto::descriptor("envoy.config.listener.v3.Listener").unwrap();
        let mut l = proto::from_json(
            desc,
            serde_json::json!({
                "name": "l",
                "filter_chains": [{ "filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": "x",
                        "http_filters": [{ "name": "f", "typed_config": config }]
                    }
                }]}]
            }),
        )?;
        typed_struct::resolve(&mut l, "")?;
        Ok(proto::dynamic_to_json(&l)["filter_chains"][0]["filters"][0]["typed_config"]
            ["http_filters"][0]["typed_config"]
            .clone())
    }

    /// Each config istiod 1.30 sends decodes as Istio's schema has it, wrapped or not.
    #[test]
    fn istiods_configs_decode() {
        let wrapped = |url: &str, value: serde_json::Value| {
            serde_json::json!({
                "@type": "type.googleapis.com/udpa.type.v1.TypedStruct",
                "type_url": format!("type.googleapis.com/{url}"),
                "value": value,
            })
        };
        let peer = serde_json::json!({
            "upstream_discovery": [{"istio_headers": {}}, {"workload_discovery": {}}],
            "upstream_propagation": [{"istio_headers": {"skip_external_clusters": true}}],
        });
        let got = decode(wrapped("io.istio.http.peer_metadata.Config", peer.clone())).unwrap();
        assert_eq!(got["upstream_propagation"], peer["upstream_propagation"]);
        let mx = serde_json::json!({"protocol": "istio-peer-exchange", "enable_discovery": true});
        let got = decode(wrapped(
            "envoy.tcp.metadataexchange.config.MetadataExchange",
            mx,
        ))
        .unwrap();
        assert_eq!(got["protocol"], "istio-peer-exchange");
        let stats = serde_json::json!({
            "@type": "type.googleapis.com/stats.PluginConfig",
            "disable_host_header_fallback": true,
            "tcp_reporting_duration": "5s",
            "metrics": [{"name": "requests_total", "dimensions": {"x": "request.host"}, "tags_to_remove": ["y"]}],
        });
        let got = decode(stats.clone()).unwrap();
        assert_eq!(got["metrics"], stats["metrics"]);
        let alpn = serde_json::json!({
            "@type": format!("type.googleapis.com/{}", super::alpn::TYPE),
            "alpn_override": [{"upstream_protocol": "HTTP2", "alpn_override": ["istio-h2"]}],
        });
        assert_eq!(decode(alpn.clone()).unwrap(), alpn);
    }

    /// Strictness is unchanged inside Istio's types: an unknown field is named.
    #[test]
    fn unknown_fields_of_istio_types_are_named() {
        let err = decode(serde_json::json!({
            "@type": "type.googleapis.com/udpa.type.v1.TypedStruct",
            "type_url": "type.googleapis.com/io.istio.http.peer_metadata.Config",
            "value": {"downstream_discovery": [{"istio_headerz": {}}]},
        }))
        .unwrap_err();
        assert!(err.contains("istio_headerz"), "{err}");
        let err = decode(serde_json::json!({
            "@type": "type.googleapis.com/stats.PluginConfig",
            "no_such_field": 1,
        }))
        .unwrap_err();
        assert!(err.contains("no_such_field"), "{err}");
    }
}
