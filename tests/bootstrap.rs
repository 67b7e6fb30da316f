//! Bootstrap loading through the real binary: invalid bootstraps are rejected with an
//! error naming the field, valid ones (JSON, YAML, `--config-yaml` merges) are accepted,
//! and the command line behaves like Envoy's.
mod common;

use std::process::Command;

use common::BIN;

const LISTENER_HEAD: &str = r#"
static_resources:
  listeners:
  - name: l
    address: { socket_address: { address: 127.0.0.1, port_value: 10000 } }
    filter_chains:
    - filters:"#;

fn hcm(route_extra: &str, filters: &str) -> String {
    format!(
        r#"{LISTENER_HEAD}
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: h
          route_config:
            virtual_hosts:
            - name: v
              domains: ["*"]
              routes:
              - match: {{ prefix: "/" }}
                route: {{ cluster: c }}
{route_extra}
          http_filters:
{filters}
  clusters:
  - name: c
    load_assignment: {{ cluster_name: c, endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: 8080 }} }} }} }}] }}] }}
"#
    )
}

const ROUTER: &str = r#"          - name: envoy.filters.http.router
            typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }"#;

const TCP: &str = "{ name: envoy.filters.network.tcp_proxy, typed_config: { \"@type\": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: t, cluster: c } }";

fn with_cluster(cluster: &str) -> String {
    format!("static_resources:\n  clusters:\n{cluster}")
}

fn validate(yaml: &str, ext: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(format!("bootstrap.{ext}"));
    std::fs::write(&path, yaml).unwrap();
    let out = Command::new(BIN)
        .arg("validate")
        .arg(&path)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[test]
fn invalid_bootstraps_are_rejected_with_the_field_named() {
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "unsupported network filter",
            format!(
                "{LISTENER_HEAD}\n      - name: envoy.filters.network.mongo_proxy\n        typed_config:\n          \"@type\": type.googleapis.com/envoy.extensions.filters.network.mongo_proxy.v3.MongoProxy\n          stat_prefix: m\n"
            ),
            "static_resources.listeners[0].filter_chains[0].filters[0] (envoy.filters.network.mongo_proxy): not supported",
        ),
        (
            "unsupported cluster field",
            with_cluster("  - name: c\n    preconnect_policy: { per_upstream_preconnect_ratio: 1.5 }\n"),
            "static_resources.clusters[0].preconnect_policy: not supported",
        ),
        (
            "unknown top-level field",
            "static_resourcez: {}\n".into(),
            "unrecognized field name 'static_resourcez'",
        ),
        (
            "unknown @type",
            format!("{LISTENER_HEAD}\n      - name: x\n        typed_config: {{ \"@type\": type.googleapis.com/no.such.Type }}\n"),
            "no.such.Type",
        ),
        ("invalid YAML", "static_resources: [\n".into(), "invalid YAML"),
        (
            "EDS cluster without eds_cluster_config",
            with_cluster("  - name: c\n    type: EDS\n"),
            "static_resources.clusters[0].eds_cluster_config: required for an EDS cluster",
        ),
        (
            "EDS from a file",
            with_cluster("  - name: c\n    type: EDS\n    eds_cluster_config: { eds_config: { path_config_source: { path: /x } } }\n"),
            "static_resources.clusters[0].eds_cluster_config.eds_config: only ads is supported for EDS",
        ),
        (
            "ADS over REST",
            "dynamic_resources: { ads_config: { api_type: REST, transport_api_version: V3 } }\n".into(),
            "dynamic_resources.ads_config.api_type: REST is not supported (GRPC or DELTA_GRPC)",
        ),
        (
            "ADS cluster that does not exist",
            "dynamic_resources: { ads_config: { api_type: GRPC, transport_api_version: V3, grpc_services: [{ envoy_grpc: { cluster_name: nope } }] } }\n".into(),
            "dynamic_resources.ads_config.grpc_services[0].envoy_grpc.cluster_name: unknown cluster 'nope'",
        ),
        (
            "ADS through google_grpc",
            "dynamic_resources: { ads_config: { api_type: GRPC, transport_api_version: V3, grpc_services: [{ google_grpc: { target_uri: x, stat_prefix: x } }] } }\n".into(),
            "dynamic_resources.ads_config.grpc_services[0].google_grpc: not supported",
        ),
        (
            "lds_config ads without ads_config",
            "node: { id: a, cluster: b }\ndynamic_resources: { lds_config: { ads: {}, resource_api_version: V3 } }\n".into(),
            "dynamic_resources.lds_config.ads: needs dynamic_resources.ads_config",
        ),
        (
            "dynamic_resources without a node",
            "dynamic_resources: { lds_config: { path_config_source: { path: /x } } }\n".into(),
            "node: id and cluster are required with dynamic_resources",
        ),
        (
            "maglev table size that is not prime",
            with_cluster("  - name: c\n    lb_policy: MAGLEV\n    maglev_lb_config: { table_size: 1000 }\n"),
            "static_resources.clusters[0].maglev_lb_config.table_size: 1000 must be a prime number",
        ),
        (
            "route to an unknown cluster",
            hcm("", ROUTER).replace("{ cluster: c }", "{ cluster: nope }"),
            "virtual_hosts[0].routes[0].route.cluster: unknown cluster 'nope'",
        ),
        (
            "duplicate cluster names",
            with_cluster("  - name: c\n  - name: c\n"),
            "static_resources.clusters[1].name: duplicate cluster 'c'",
        ),
        (
            "listener address is a name",
            hcm("", ROUTER).replace("address: 127.0.0.1, port_value: 10000", "address: localhost, port_value: 10000"),
            "static_resources.listeners[0].address.socket_address.address: 'localhost' is not an IP address",
        ),
        (
            "port out of range",
            hcm("", ROUTER).replace("port_value: 10000", "port_value: 70000"),
            "port_value: 70000 is out of range",
        ),
        (
            "STATIC cluster with a host name",
            with_cluster(
                "  - name: c\n    load_assignment: { cluster_name: c, endpoints: [{ lb_endpoints: [{ endpoint: { address: { socket_address: { address: example.com, port_value: 80 } } } }] }] }\n",
            ),
            "'example.com' is not an IP address (STATIC and EDS endpoints need IPs",
        ),
        (
            "invalid route regex",
            hcm("", ROUTER).replace("match: { prefix: \"/\" }", "match: { safe_regex: { regex: \"/(\" } }"),
            "route_config.virtual_hosts[0].routes[0].match.safe_regex.regex: invalid regex '/('",
        ),
        (
            "prefix_rewrite and regex_rewrite together",
            hcm("", ROUTER).replace(
                "{ cluster: c }",
                "{ cluster: c, prefix_rewrite: \"/x\", regex_rewrite: { pattern: { regex: a }, substitution: b } }",
            ),
            "routes[0].route: specify only one of prefix_rewrite or regex_rewrite",
        ),
        (
            "path_separated_prefix ending in a slash",
            hcm("", ROUTER).replace("match: { prefix: \"/\" }", "match: { path_separated_prefix: \"/api/\" }"),
            "routes[0].match.path_separated_prefix: '/api/' must not end with '/'",
        ),
        (
            "weighted cluster that does not exist",
            hcm("", ROUTER).replace(
                "{ cluster: c }",
                "{ weighted_clusters: { clusters: [{ name: c, weight: 50 }, { name: canary, weight: 50 }] } }",
            ),
            "routes[0].route.weighted_clusters.clusters[1].name: unknown cluster 'canary'",
        ),
        (
            "weights that sum to zero",
            hcm("", ROUTER).replace("{ cluster: c }", "{ weighted_clusters: { clusters: [{ name: c, weight: 0 }] } }"),
            "routes[0].route.weighted_clusters: the sum of the weights must be greater than 0",
        ),
        (
            "a host header added by a route",
            hcm("", ROUTER).replace(
                "route: { cluster: c }",
                "request_headers_to_add: [{ header: { key: Host, value: x } }]\n                route: { cluster: c }",
            ),
            "routes[0].request_headers_to_add[0].header.key: 'Host': :-prefixed or host headers may not be modified",
        ),
        (
            "an unknown operator in a header value",
            hcm("", ROUTER).replace(
                "route: { cluster: c }",
                "response_headers_to_add: [{ header: { key: x, value: \"%NOPE%\" } }]\n                route: { cluster: c }",
            ),
            "routes[0].response_headers_to_add[0].header.value: command operator %NOPE% is not supported",
        ),
        (
            "redirect with a path template rewrite",
            hcm("", ROUTER).replace("route: { cluster: c }", "redirect: { path_rewrite: \"/x\" }"),
            "routes[0].redirect.path_rewrite: not supported",
        ),
        (
            "direct response with an impossible status",
            hcm("", ROUTER).replace("route: { cluster: c }", "direct_response: { status: 99 }"),
            "routes[0].direct_response.status: 99 is not in [200, 600)",
        ),
        (
            "RDS",
            format!(
                "{LISTENER_HEAD}\n      - name: envoy.filters.network.http_connection_manager\n        typed_config:\n          \"@type\": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager\n          stat_prefix: h\n          rds: {{ route_config_name: r, config_source: {{ ads: {{}} }} }}\n{ROUTER}\n"
            ).replace("          - name: envoy.filters.http.router", "          http_filters:\n          - name: envoy.filters.http.router"),
            "static_resources.listeners[0].filter_chains[0]: RDS from ads needs dynamic_resources.ads_config",
        ),
        (
            "misspelt nested field",
            hcm("", ROUTER).replace("stat_prefix: h", "stat_prefixx: h"),
            "unrecognized field name 'stat_prefixx'",
        ),
        (
            "no router filter",
            hcm("", "            []"),
            "http_filters: envoy.filters.http.router is required",
        ),
        (
            "unsupported HTTP filter",
            hcm(
                "",
                &format!(
                    "          - name: envoy.filters.http.lua\n            typed_config: {{ \"@type\": type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua }}\n{ROUTER}"
                ),
            ),
            "http_filters[0] (envoy.filters.http.lua): not supported",
        ),
        (
            "fault abort with an impossible status",
            hcm(
                "",
                &format!(
                    "          - name: envoy.filters.http.fault\n            typed_config: {{ \"@type\": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault, abort: {{ http_status: 99 }} }}\n{ROUTER}"
                ),
            ),
            "http_filters[0].typed_config.abort.http_status: 99 is not in [200, 600)",
        ),
        (
            "a header count limit downstream",
            hcm("", ROUTER).replace(
                "stat_prefix: h",
                "stat_prefix: h\n          common_http_protocol_options: { max_headers_count: 50 }",
            ),
            "typed_config.common_http_protocol_options.max_headers_count",
        ),
        (
            "escaped slashes unescaped",
            hcm("", ROUTER).replace(
                "stat_prefix: h",
                "stat_prefix: h\n          path_with_escaped_slashes_action: UNESCAPE_AND_FORWARD",
            ),
            "typed_config.path_with_escaped_slashes_action: only KEEP_UNCHANGED is supported",
        ),
        (
            "ext_authz over google_grpc",
            hcm(
                "",
                &format!(
                    "          - name: envoy.filters.http.ext_authz\n            typed_config: {{ \"@type\": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz, grpc_service: {{ google_grpc: {{ target_uri: x, stat_prefix: y }} }} }}\n{ROUTER}"
                ),
            ),
            "http_filters[0].typed_config.grpc_service.google_grpc: not supported",
        ),
        (
            "ext_authz asking to re-route",
            hcm(
                "",
                &format!(
                    "          - name: envoy.filters.http.ext_authz\n            typed_config: {{ \"@type\": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz, clear_route_cache: true, grpc_service: {{ envoy_grpc: {{ cluster_name: c }} }} }}\n{ROUTER}"
                ),
            ),
            "http_filters[0].typed_config.clear_route_cache: not supported",
        ),
        (
            "per-route config of an unsupported filter",
            hcm("", ROUTER).replace(
                "route: { cluster: c }",
                "route: { cluster: c }\n                typed_per_filter_config: { envoy.filters.http.lua: { \"@type\": type.googleapis.com/envoy.extensions.filters.http.lua.v3.LuaPerRoute, disabled: true } }",
            ),
            "routes[0].typed_per_filter_config[\"envoy.filters.http.lua\"] (envoy.filters.http.lua): not supported",
        ),
        (
            "TLS 1.1 upstream",
            with_cluster(
                "  - name: c\n    transport_socket: { name: envoy.transport_sockets.tls, typed_config: { \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext, common_tls_context: { tls_params: { tls_maximum_protocol_version: TLSv1_1 } } } }\n",
            ),
            "static_resources.clusters[0].transport_socket.typed_config.common_tls_context.tls_params.tls_maximum_protocol_version: TLS 1.0 and 1.1 are not supported",
        ),
        (
            "duplicate domains",
            hcm("            - name: w\n              domains: [\"*\"]\n              routes: []", ROUTER),
            "only unique values for domains are permitted; '*' appears more than once",
        ),
        (
            "REST config source",
            "node: { id: a, cluster: b }\ndynamic_resources: { cds_config: { api_config_source: { api_type: REST } } }\n".into(),
            "dynamic_resources.cds_config: only ads and path_config_source are supported",
        ),
        (
            "ORIGINAL_DST with round robin",
            with_cluster("  - name: c\n    type: ORIGINAL_DST\n"),
            "lb_policy: ROUND_ROBIN is not valid for cluster type ORIGINAL_DST",
        ),
        (
            "LOGICAL_DNS with two hosts",
            with_cluster(
                "  - name: c\n    type: LOGICAL_DNS\n    load_assignment: { cluster_name: c, endpoints: [{ lb_endpoints: [{ endpoint: { address: { socket_address: { address: a.example, port_value: 80 } } } }, { endpoint: { address: { socket_address: { address: b.example, port_value: 80 } } } }] }] }\n",
            ),
            "LOGICAL_DNS clusters must have a single host",
        ),
        (
            "wrong value type",
            hcm("", ROUTER).replace("port_value: 10000", "port_value: abc"),
            "static_resources.listeners[0].address.socket_address.port_value",
        ),
        (
            "unknown enum value",
            with_cluster("  - name: c\n    type: FOO\n"),
            "static_resources.clusters[0].type",
        ),
        (
            "two chains matching the same connections",
            hcm("", ROUTER).replace("    filter_chains:\n    - filters:", &format!("    filter_chains:\n    - filter_chain_match: {{ destination_port: 80 }}\n      filters: [{TCP}]\n    - filter_chain_match: {{ destination_port: 80 }}\n      filters:")),
            "static_resources.listeners[0].filter_chains[1].filter_chain_match: the same as filter_chains[0]'s",
        ),
        (
            "prefix length too long",
            hcm("", ROUTER).replace("    - filters:", "    - filter_chain_match: { prefix_ranges: [{ address_prefix: 10.0.0.0, prefix_len: 33 }] }\n      filters:"),
            "static_resources.listeners[0].filter_chains[0].filter_chain_match.prefix_ranges[0].prefix_len: prefix_len 33 is longer than 32",
        ),
        (
            "bad server name wildcard",
            hcm("", ROUTER).replace("    - filters:", "    - filter_chain_match: { server_names: [\"api*.example.com\"] }\n      filters:"),
            "static_resources.listeners[0].filter_chains[0].filter_chain_match.server_names[0]: 'api*.example.com' is neither a name nor a '*.' wildcard",
        ),
        (
            "a filter chain matcher over unnamed chains",
            hcm("", ROUTER).replace("    filter_chains:", "    filter_chain_matcher: { matcher_tree: { input: { name: port, typed_config: { \"@type\": type.googleapis.com/envoy.extensions.matching.common_inputs.network.v3.DestinationPortInput } }, exact_match_map: { map: {} } } }\n    filter_chains:"),
            "static_resources.listeners[0].filter_chains[0].name: \"name\" field is required when using a listener matcher",
        ),
        (
            "a filter chain matcher with an empty map",
            hcm("", ROUTER).replace("    filter_chains:\n    -", "    filter_chain_matcher: { matcher_tree: { input: { name: port, typed_config: { \"@type\": type.googleapis.com/envoy.extensions.matching.common_inputs.network.v3.DestinationPortInput } }, exact_match_map: { map: {} } } }\n    filter_chains:\n    - name: c\n     "),
            "static_resources.listeners[0].filter_chain_matcher.matcher_tree.exact_match_map.map: at least one entry is required",
        ),
        (
            "unsupported listener filter",
            hcm("", ROUTER).replace("    filter_chains:", "    listener_filters:\n    - name: envoy.filters.listener.proxy_protocol\n      typed_config: { \"@type\": type.googleapis.com/envoy.extensions.filters.listener.proxy_protocol.v3.ProxyProtocol }\n    filter_chains:"),
            "static_resources.listeners[0].listener_filters[0] (envoy.filters.listener.proxy_protocol): not supported",
        ),
        (
            "listener filter predicate without a rule",
            hcm("", ROUTER).replace("    filter_chains:", "    listener_filters:\n    - name: envoy.filters.listener.http_inspector\n      typed_config: { \"@type\": type.googleapis.com/envoy.extensions.filters.listener.http_inspector.v3.HttpInspector }\n      filter_disabled: { destination_port_range: { start: 90, end: 80 } }\n    filter_chains:"),
            "static_resources.listeners[0].listener_filters[0].filter_disabled.destination_port_range: [90, 80) is not a port range",
        ),
        (
            "socket option other than SO_MARK",
            with_cluster("  - name: c\n    upstream_bind_config: { source_address: { address: 127.0.0.6, port_value: 0 }, socket_options: [{ level: 6, name: 1, int_value: 1 }] }\n"),
            "static_resources.clusters[0].upstream_bind_config.socket_options[0]: only SO_MARK (level 1, name 36, int_value) is supported",
        ),
        (
            "original destination header on a static cluster",
            with_cluster("  - name: c\n    original_dst_lb_config: { use_http_header: true }\n"),
            "static_resources.clusters[0].original_dst_lb_config: only allowed on ORIGINAL_DST clusters",
        ),
        (
            "least request with one choice",
            with_cluster("  - name: c\n    lb_policy: LEAST_REQUEST\n    least_request_lb_config: { choice_count: 1 }\n"),
            "static_resources.clusters[0].least_request_lb_config.choice_count: must be at least 2, got 1",
        ),
        (
            "UDP listener",
            hcm("", ROUTER).replace("address: 127.0.0.1, port_value: 10000", "address: 127.0.0.1, port_value: 10000, protocol: UDP"),
            "static_resources.listeners[0].address.socket_address.protocol: not supported",
        ),
        (
            "stats sink of an unsupported type",
            "stats_sinks:\n- name: envoy.stat_sinks.dog_statsd\n  typed_config: { \"@type\": type.googleapis.com/envoy.config.metrics.v3.DogStatsdSink, address: { socket_address: { address: 127.0.0.1, port_value: 8125 } } }\n".into(),
            "stats_sinks[0] (envoy.stat_sinks.dog_statsd): not supported",
        ),
        (
            "metrics service sink with tags as labels",
            format!("stats_sinks:\n- name: envoy.stat_sinks.metrics_service\n  typed_config: {{ \"@type\": type.googleapis.com/envoy.config.metrics.v3.MetricsServiceConfig, emit_tags_as_labels: true, grpc_service: {{ envoy_grpc: {{ cluster_name: c }} }} }}\n{}", with_cluster("  - name: c\n")),
            "stats_sinks[0].typed_config.emit_tags_as_labels: not supported",
        ),
        (
            "metrics service sink on an unknown cluster",
            "stats_sinks:\n- name: envoy.stat_sinks.metrics_service\n  typed_config: { \"@type\": type.googleapis.com/envoy.config.metrics.v3.MetricsServiceConfig, grpc_service: { envoy_grpc: { cluster_name: nope } } }\n".into(),
            "stats_sinks[0].typed_config.grpc_service.envoy_grpc.cluster_name: unknown cluster 'nope'",
        ),
        (
            "statsd sink with a host name",
            "stats_sinks:\n- name: envoy.stat_sinks.statsd\n  typed_config: { \"@type\": type.googleapis.com/envoy.config.metrics.v3.StatsdSink, address: { socket_address: { address: statsd.local, port_value: 8125 } } }\n".into(),
            "stats_sinks[0].typed_config.address.socket_address.address: 'statsd.local' is not an IP address",
        ),
        (
            "stats flush interval too long",
            "stats_flush_interval: 300s\n".into(),
            "stats_flush_interval",
        ),
    ];
    assert!(cases.len() >= 15);
    for (what, yaml, want) in &cases {
        let (ok, out) = validate(yaml, "yaml");
        assert!(!ok, "{what}: accepted, but should be rejected");
        assert!(
            out.contains(want),
            "{what}: error does not contain `{want}`:\n{out}"
        );
    }
}

#[test]
fn valid_bootstraps_are_accepted_in_yaml_and_json() {
    let yaml = hcm("", ROUTER);
    let (ok, out) = validate(&yaml, "yaml");
    assert!(ok, "{out}");
    assert!(out.contains("OK"), "{out}");
    let v: serde_yaml::Value = serde_yaml::from_str(&yaml).unwrap();
    let json = serde_json::to_string(&v).unwrap();
    let (ok, out) = validate(&json, "json");
    assert!(ok, "{out}");
    // Circuit breakers opened wide (Envoy's benchmarking advice) are accepted.
    let open = with_cluster(
        "  - name: c\n    circuit_breakers: { thresholds: [{ max_connections: 1000000000, max_pending_requests: 1000000000, max_requests: 1000000000, max_retries: 1000000000 }] }\n",
    );
    let (ok, out) = validate(&open, "yaml");
    assert!(ok, "{out}");
    for example in
        std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/examples")).unwrap()
    {
        let path = example.unwrap().path();
        let out = Command::new(BIN)
            .arg("validate")
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn config_yaml_merges_over_the_file_like_envoy() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("b.yaml");
    std::fs::write(
        &path,
        hcm("", ROUTER).replace("{ cluster: c }", "{ cluster: extra }"),
    )
    .unwrap();
    // Without the overlay the route names a missing cluster; the overlay appends it
    // (repeated fields are appended, as protobuf MergeFrom does).
    let out = Command::new(BIN)
        .args(["--mode", "validate", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let overlay = "static_resources: { clusters: [{ name: extra }] }";
    let out = Command::new(BIN)
        .args(["--mode", "validate", "-c"])
        .arg(&path)
        .args(["--config-yaml", overlay])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // --config-yaml alone is a whole bootstrap.
    let out = Command::new(BIN)
        .args(["--mode", "validate", "--config-yaml", overlay])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn unknown_flags_are_named() {
    let out = Command::new(BIN).arg("--no-such-flag").output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--no-such-flag"));
}

#[test]
fn envoy_flags_from_istio_agent_are_accepted() {
    let out = Command::new(BIN)
        .args(["--mode", "validate"])
        .args(common::istio::AGENT_FLAGS)
        .args([
            "--service-node",
            "sidecar~10.0.0.1~app.ns~ns.svc.cluster.local",
            "--service-cluster",
            "app.ns",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
