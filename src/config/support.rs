//! The list of Envoy config pilotfish implements, field by field, and the check that
//! rejects everything else. A field that is set but not listed here is an error naming
//! its path: config that would change traffic behaviour is never silently ignored.
//!
//! `docs/compatibility.md` is generated from the same facts by hand; a test keeps the
//! two in step.
use prost_reflect::{DynamicMessage, ReflectMessage, Value};

use super::proto;

/// Messages whose every field is understood (identity, metadata, plain values).
pub(super) const OPEN: &[&str] = &[
    "google.protobuf.Duration",
    "google.protobuf.UInt32Value",
    "google.protobuf.UInt64Value",
    "google.protobuf.BoolValue",
    "google.protobuf.StringValue",
    "google.protobuf.Struct",
    "google.protobuf.Value",
    "google.protobuf.ListValue",
    "google.protobuf.Empty",
    "envoy.config.core.v3.Metadata",
    "envoy.config.core.v3.Locality",
    "envoy.config.core.v3.BuildVersion",
    "envoy.config.core.v3.Extension",
    "envoy.type.v3.SemanticVersion",
];

/// Per message type, the fields pilotfish implements. Fields not listed are rejected
/// when set.
const FIELDS: &[(&str, &[&str])] = &[
    (
        "envoy.config.bootstrap.v3.Bootstrap",
        &[
            "node",
            "static_resources",
            "dynamic_resources",
            "admin",
            "stats_config",
            "layered_runtime",
            "overload_manager",
            "application_log_config",
            "bootstrap_extensions",
            "cluster_manager",
            "deferred_stat_options",
            "tracing",
            "stats_sinks",
            "stats_flush_interval",
            "stats_flush_on_admin",
        ],
    ),
    (
        "envoy.config.metrics.v3.StatsSink",
        &["name", "typed_config"],
    ),
    (
        "envoy.config.metrics.v3.StatsdSink",
        &["address", "tcp_cluster_name", "prefix"],
    ),
    (
        "envoy.config.metrics.v3.MetricsServiceConfig",
        &[
            "grpc_service",
            "transport_api_version",
            "report_counters_as_deltas",
            "histogram_emit_mode",
            "batch_size",
        ],
    ),
    ("envoy.config.trace.v3.Tracing", &["http"]),
    (
        "envoy.config.trace.v3.Tracing.Http",
        &["name", "typed_config"],
    ),
    (
        "envoy.config.trace.v3.ZipkinConfig",
        &[
            "collector_cluster",
            "collector_endpoint",
            "trace_id_128bit",
            "shared_span_context",
            "collector_endpoint_version",
            "collector_hostname",
            "trace_context_option",
            "collector_service",
        ],
    ),
    (
        "envoy.config.trace.v3.OpenTelemetryConfig",
        &[
            "grpc_service",
            "http_service",
            "service_name",
            "max_cache_size",
            "set_telemetry_sdk_resource_attributes",
            "set_service_name_resource_attribute",
            "set_instrumentation_scope",
        ],
    ),
    (
        "envoy.config.core.v3.HttpService",
        &["http_uri", "request_headers_to_add"],
    ),
    (
        "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager.Tracing",
        &[
            "client_sampling",
            "random_sampling",
            "overall_sampling",
            "verbose",
            "max_path_tag_length",
            "custom_tags",
            "provider",
            "spawn_upstream_span",
        ],
    ),
    (
        "envoy.type.tracing.v3.CustomTag",
        &[
            "tag",
            "literal",
            "environment",
            "request_header",
            "metadata",
            "value",
        ],
    ),
    ("envoy.type.tracing.v3.CustomTag.Literal", &["value"]),
    (
        "envoy.type.tracing.v3.CustomTag.Environment",
        &["name", "default_value"],
    ),
    (
        "envoy.type.tracing.v3.CustomTag.Header",
        &["name", "default_value"],
    ),
    (
        "envoy.type.tracing.v3.CustomTag.Metadata",
        &["kind", "metadata_key", "default_value"],
    ),
    ("envoy.type.metadata.v3.MetadataKind", &["request"]),
    ("envoy.type.metadata.v3.MetadataKind.Request", &[]),
    ("envoy.type.metadata.v3.MetadataKey", &["key", "path"]),
    ("envoy.type.metadata.v3.MetadataKey.PathSegment", &["key"]),
    (
        "envoy.config.metrics.v3.StatsConfig",
        &[
            "stats_tags",
            "use_all_default_tags",
            "stats_matcher",
            "histogram_bucket_settings",
        ],
    ),
    (
        "envoy.config.metrics.v3.TagSpecifier",
        &["tag_name", "regex", "fixed_value"],
    ),
    (
        "envoy.config.metrics.v3.StatsMatcher",
        &["reject_all", "exclusion_list", "inclusion_list"],
    ),
    ("envoy.type.matcher.v3.ListStringMatcher", &["patterns"]),
    (
        "envoy.config.metrics.v3.HistogramBucketSettings",
        &["match", "buckets"],
    ),
    ("envoy.config.bootstrap.v3.LayeredRuntime", &["layers"]),
    (
        "envoy.config.bootstrap.v3.RuntimeLayer",
        &["name", "static_layer", "admin_layer"],
    ),
    ("envoy.config.bootstrap.v3.RuntimeLayer.AdminLayer", &[]),
    (
        "envoy.config.overload.v3.OverloadManager",
        &["refresh_interval", "resource_monitors"],
    ),
    (
        "envoy.config.overload.v3.ResourceMonitor",
        &["name", "typed_config"],
    ),
    (
        "envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig",
        &["max_active_downstream_connections"],
    ),
    (
        "envoy.config.bootstrap.v3.Bootstrap.ApplicationLogConfig",
        &["log_format"],
    ),
    (
        "envoy.config.bootstrap.v3.Bootstrap.ApplicationLogConfig.LogFormat",
        &["json_format", "text_format"],
    ),
    (
        "envoy.config.core.v3.TypedExtensionConfig",
        &["name", "typed_config"],
    ),
    (
        "envoy.extensions.bootstrap.internal_listener.v3.InternalListener",
        &["buffer_size_kb"],
    ),
    (
        "envoy.config.bootstrap.v3.ClusterManager",
        &["outlier_detection", "enable_deferred_cluster_creation"],
    ),
    (
        "envoy.config.bootstrap.v3.ClusterManager.OutlierDetection",
        &["event_log_path"],
    ),
    (
        "envoy.config.bootstrap.v3.Bootstrap.DeferredStatOptions",
        &["enable_deferred_creation_stats"],
    ),
    (
        "envoy.config.bootstrap.v3.Bootstrap.DynamicResources",
        &["lds_config", "cds_config", "ads_config"],
    ),
    (
        "envoy.config.core.v3.ApiConfigSource",
        &[
            "api_type",
            "transport_api_version",
            "grpc_services",
            "set_node_on_first_message_only",
        ],
    ),
    (
        "envoy.config.core.v3.GrpcService",
        &["envoy_grpc", "timeout", "initial_metadata"],
    ),
    (
        "envoy.config.core.v3.GrpcService.EnvoyGrpc",
        &["cluster_name", "authority"],
    ),
    (
        "envoy.config.core.v3.ConfigSource",
        &[
            "ads",
            "path_config_source",
            "api_config_source",
            "initial_fetch_timeout",
            "resource_api_version",
        ],
    ),
    ("envoy.config.core.v3.AggregatedConfigSource", &[]),
    ("envoy.config.core.v3.PathConfigSource", &["path"]),
    ("envoy.config.core.v3.Pipe", &["path"]),
    (
        "envoy.config.bootstrap.v3.Bootstrap.StaticResources",
        &["listeners", "clusters"],
    ),
    (
        "envoy.config.bootstrap.v3.Admin",
        &["address", "access_log", "profile_path"],
    ),
    (
        "envoy.config.core.v3.Node",
        &[
            "id",
            "cluster",
            "metadata",
            "locality",
            "user_agent_name",
            "user_agent_version",
            "user_agent_build_version",
            "extensions",
            "client_features",
            "dynamic_parameters",
        ],
    ),
    ("envoy.config.core.v3.Address", &["socket_address", "pipe"]),
    (
        "envoy.config.core.v3.SocketAddress",
        &["address", "port_value", "ipv4_compat"],
    ),
    (
        "envoy.config.listener.v3.Listener",
        &[
            "name",
            "address",
            "filter_chains",
            "listener_filters",
            "listener_filters_timeout",
            "continue_on_listener_filters_timeout",
            "stat_prefix",
            "per_connection_buffer_limit_bytes",
            "traffic_direction",
            "bind_to_port",
            "metadata",
            "use_original_dst",
            "additional_addresses",
            "default_filter_chain",
            "filter_chain_matcher",
            "enable_reuse_port",
            "ignore_global_conn_limit",
            "bypass_overload_manager",
            "max_connections_to_accept_per_socket_event",
        ],
    ),
    ("envoy.config.listener.v3.AdditionalAddress", &["address"]),
    (
        "xds.type.matcher.v3.Matcher",
        &["matcher_list", "matcher_tree", "on_no_match"],
    ),
    (
        "xds.type.matcher.v3.Matcher.OnMatch",
        &["matcher", "action"],
    ),
    ("xds.type.matcher.v3.Matcher.MatcherList", &["matchers"]),
    (
        "xds.type.matcher.v3.Matcher.MatcherList.FieldMatcher",
        &["predicate", "on_match"],
    ),
    (
        "xds.type.matcher.v3.Matcher.MatcherList.Predicate",
        &[
            "single_predicate",
            "or_matcher",
            "and_matcher",
            "not_matcher",
        ],
    ),
    (
        "xds.type.matcher.v3.Matcher.MatcherList.Predicate.SinglePredicate",
        &["input", "value_match", "custom_match"],
    ),
    (
        "xds.type.matcher.v3.Matcher.MatcherList.Predicate.PredicateList",
        &["predicate"],
    ),
    (
        "xds.type.matcher.v3.Matcher.MatcherTree",
        &[
            "input",
            "exact_match_map",
            "prefix_match_map",
            "custom_match",
        ],
    ),
    ("xds.type.matcher.v3.Matcher.MatcherTree.MatchMap", &["map"]),
    (
        "xds.core.v3.TypedExtensionConfig",
        &["name", "typed_config"],
    ),
    (
        "xds.type.matcher.v3.StringMatcher",
        &[
            "exact",
            "prefix",
            "suffix",
            "safe_regex",
            "contains",
            "ignore_case",
        ],
    ),
    ("xds.type.matcher.v3.RegexMatcher", &["google_re2", "regex"]),
    ("xds.type.matcher.v3.RegexMatcher.GoogleRE2", &[]),
    ("xds.type.matcher.v3.IPMatcher", &["range_matchers"]),
    (
        "xds.type.matcher.v3.IPMatcher.IPRangeMatcher",
        &["ranges", "on_match", "exclusive"],
    ),
    ("xds.core.v3.CidrRange", &["address_prefix", "prefix_len"]),
    (
        "envoy.extensions.matching.input_matchers.ip.v3.Ip",
        &["cidr_ranges", "stat_prefix"],
    ),
    (
        "envoy.extensions.matching.common_inputs.network.v3.DestinationIPInput",
        &[],
    ),
    (
        "envoy.extensions.matching.common_inputs.network.v3.DestinationPortInput",
        &[],
    ),
    (
        "envoy.extensions.matching.common_inputs.network.v3.SourceIPInput",
        &[],
    ),
    (
        "envoy.extensions.matching.common_inputs.network.v3.SourcePortInput",
        &[],
    ),
    (
        "envoy.extensions.matching.common_inputs.network.v3.DirectSourceIPInput",
        &[],
    ),
    (
        "envoy.extensions.matching.common_inputs.network.v3.SourceTypeInput",
        &[],
    ),
    (
        "envoy.extensions.matching.common_inputs.network.v3.ServerNameInput",
        &[],
    ),
    (
        "envoy.extensions.matching.common_inputs.network.v3.TransportProtocolInput",
        &[],
    ),
    (
        "envoy.extensions.matching.common_inputs.network.v3.ApplicationProtocolInput",
        &[],
    ),
    (
        "envoy.config.listener.v3.FilterChain",
        &[
            "filters",
            "name",
            "metadata",
            "filter_chain_match",
            "transport_socket_connect_timeout",
            "transport_socket",
        ],
    ),
    (
        "envoy.config.listener.v3.FilterChainMatch",
        &[
            "destination_port",
            "prefix_ranges",
            "direct_source_prefix_ranges",
            "source_type",
            "source_prefix_ranges",
            "source_ports",
            "server_names",
            "transport_protocol",
            "application_protocols",
        ],
    ),
    (
        "envoy.config.core.v3.CidrRange",
        &["address_prefix", "prefix_len"],
    ),
    ("envoy.config.listener.v3.Filter", &["name", "typed_config"]),
    (
        "envoy.config.listener.v3.ListenerFilter",
        &["name", "typed_config", "filter_disabled"],
    ),
    (
        "envoy.config.listener.v3.ListenerFilterChainMatchPredicate",
        &[
            "or_match",
            "and_match",
            "not_match",
            "any_match",
            "destination_port_range",
        ],
    ),
    (
        "envoy.config.listener.v3.ListenerFilterChainMatchPredicate.MatchSet",
        &["rules"],
    ),
    ("envoy.type.v3.Int32Range", &["start", "end"]),
    (
        "envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector",
        &["initial_read_buffer_size"],
    ),
    (
        "envoy.extensions.filters.listener.http_inspector.v3.HttpInspector",
        &[],
    ),
    (
        "envoy.extensions.filters.listener.original_dst.v3.OriginalDst",
        &[],
    ),
    (
        "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
        &[
            "stat_prefix",
            "cluster",
            "access_log",
            "idle_timeout",
            "max_downstream_connection_duration",
            "hash_policy",
            "max_connect_attempts",
        ],
    ),
    ("envoy.type.v3.HashPolicy", &["source_ip", "filter_state"]),
    ("envoy.type.v3.HashPolicy.SourceIp", &[]),
    ("envoy.type.v3.HashPolicy.FilterState", &["key"]),
    (
        "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        &[
            "forward_client_cert_details",
            "set_current_client_cert_details",
            "stat_prefix",
            "codec_type",
            "route_config",
            "rds",
            "http_filters",
            "generate_request_id",
            "server_name",
            "access_log",
            "upgrade_configs",
            "normalize_path",
            "merge_slashes",
            "use_remote_address",
            "skip_xff_append",
            "xff_num_trusted_hops",
            "preserve_external_request_id",
            "request_id_extension",
            "stream_idle_timeout",
            "path_with_escaped_slashes_action",
            "proxy_100_continue",
            "common_http_protocol_options",
            "drain_timeout",
            "internal_address_config",
            "request_timeout",
            "request_headers_timeout",
            "http_protocol_options",
            "max_request_headers_kb",
            "tracing",
            "http2_protocol_options",
        ],
    ),
    (
        "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager.InternalAddressConfig",
        &["unix_sockets", "cidr_ranges"],
    ),
    (
        "envoy.extensions.filters.network.http_connection_manager.v3.Rds",
        &["config_source", "route_config_name"],
    ),
    (
        "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager.UpgradeConfig",
        &["upgrade_type", "enabled"],
    ),
    (
        "envoy.extensions.filters.network.http_connection_manager.v3.HttpFilter",
        &["name", "typed_config"],
    ),
    ("envoy.extensions.filters.http.router.v3.Router", &[]),
    ("envoy.extensions.filters.http.cors.v3.Cors", &[]),
    (
        "envoy.extensions.filters.http.cors.v3.CorsPolicy",
        &[
            "allow_origin_string_match",
            "allow_methods",
            "allow_headers",
            "expose_headers",
            "max_age",
            "allow_credentials",
            "filter_enabled",
            "forward_not_matching_preflights",
        ],
    ),
    (
        "envoy.extensions.filters.http.grpc_stats.v3.FilterConfig",
        &[
            "emit_filter_state",
            "individual_method_stats_allowlist",
            "stats_for_all_methods",
            "replace_dots_in_grpc_service_name",
        ],
    ),
    ("envoy.config.core.v3.GrpcMethodList", &["services"]),
    ("envoy.config.cluster.v3.Filter", &["name", "typed_config"]),
    (
        "envoy.tcp.metadataexchange.config.MetadataExchange",
        &["protocol", "enable_discovery", "additional_labels"],
    ),
    (
        "io.istio.http.peer_metadata.Config",
        &[
            "downstream_discovery",
            "upstream_discovery",
            "downstream_propagation",
            "upstream_propagation",
            "additional_labels",
        ],
    ),
    (
        "io.istio.http.peer_metadata.Config.DiscoveryMethod",
        &["istio_headers", "workload_discovery"],
    ),
    (
        "io.istio.http.peer_metadata.Config.PropagationMethod",
        &["istio_headers"],
    ),
    (
        "io.istio.http.peer_metadata.Config.IstioHeaders",
        &["skip_external_clusters"],
    ),
    ("io.istio.http.peer_metadata.Config.WorkloadDiscovery", &[]),
    (
        "istio.envoy.config.filter.http.alpn.v2alpha1.FilterConfig",
        &["alpn_override"],
    ),
    (
        "stats.PluginConfig",
        &[
            "disable_host_header_fallback",
            "tcp_reporting_duration",
            "metrics",
            "reporter",
            "rotation_interval",
            "graceful_deletion_interval",
        ],
    ),
    (
        "stats.MetricConfig",
        &["dimensions", "name", "tags_to_remove", "drop"],
    ),
    (
        "istio.envoy.config.filter.http.alpn.v2alpha1.FilterConfig.AlpnOverride",
        &["upstream_protocol", "alpn_override"],
    ),
    (
        "envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
        &[
            "grpc_service",
            "http_service",
            "transport_api_version",
            "failure_mode_allow",
            "failure_mode_allow_header_add",
            "with_request_body",
            "status_on_error",
            "stat_prefix",
            "allowed_headers",
            "disallowed_headers",
            "filter_enabled_metadata",
            "include_peer_certificate",
        ],
    ),
    (
        "envoy.extensions.filters.http.ext_authz.v3.BufferSettings",
        &[
            "max_request_bytes",
            "allow_partial_message",
            "pack_as_bytes",
        ],
    ),
    (
        "envoy.extensions.filters.http.ext_authz.v3.HttpService",
        &[
            "server_uri",
            "path_prefix",
            "authorization_request",
            "authorization_response",
        ],
    ),
    (
        "envoy.extensions.filters.http.ext_authz.v3.AuthorizationRequest",
        &["allowed_headers", "headers_to_add"],
    ),
    (
        "envoy.extensions.filters.http.ext_authz.v3.AuthorizationResponse",
        &[
            "allowed_upstream_headers",
            "allowed_upstream_headers_to_append",
            "allowed_client_headers",
            "allowed_client_headers_on_success",
        ],
    ),
    (
        "envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute",
        &["disabled", "check_settings"],
    ),
    (
        "envoy.extensions.filters.http.ext_authz.v3.CheckSettings",
        &["context_extensions", "disable_request_body_buffering"],
    ),
    (
        "envoy.config.core.v3.HttpUri",
        &["uri", "cluster", "timeout"],
    ),
    ("envoy.type.v3.HttpStatus", &["code"]),
    (
        "envoy.type.matcher.v3.MetadataMatcher",
        &["filter", "path", "value", "invert"],
    ),
    (
        "envoy.type.matcher.v3.MetadataMatcher.PathSegment",
        &["key"],
    ),
    (
        "envoy.type.matcher.v3.ValueMatcher",
        &[
            "null_match",
            "double_match",
            "string_match",
            "bool_match",
            "present_match",
            "list_match",
            "or_match",
        ],
    ),
    ("envoy.type.matcher.v3.ListMatcher", &["one_of"]),
    ("envoy.type.matcher.v3.OrMatcher", &["value_matchers"]),
    ("envoy.type.matcher.v3.DoubleMatcher", &["range", "exact"]),
    ("envoy.type.v3.DoubleRange", &["start", "end"]),
    (
        "envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
        &[
            "providers",
            "rules",
            "bypass_cors_preflight",
            "requirement_map",
            "strip_failure_response",
            "stat_prefix",
        ],
    ),
    (
        "envoy.extensions.filters.http.jwt_authn.v3.JwtProvider",
        &[
            "issuer",
            "audiences",
            "subjects",
            "require_expiration",
            "max_lifetime",
            "forward",
            "from_headers",
            "from_params",
            "from_cookies",
            "forward_payload_header",
            "pad_forward_payload_header",
            "payload_in_metadata",
            "normalize_payload_in_metadata",
            "header_in_metadata",
            "failed_status_in_metadata",
            "clock_skew_seconds",
            "claim_to_headers",
            "remote_jwks",
            "local_jwks",
        ],
    ),
    (
        "envoy.extensions.filters.http.jwt_authn.v3.JwtProvider.NormalizePayload",
        &["space_delimited_claims"],
    ),
    (
        "envoy.extensions.filters.http.jwt_authn.v3.RemoteJwks",
        &["http_uri", "cache_duration", "async_fetch", "retry_policy"],
    ),
    (
        "envoy.extensions.filters.http.jwt_authn.v3.JwksAsyncFetch",
        &["fast_listener", "failed_refetch_duration"],
    ),
    ("envoy.config.core.v3.RetryPolicy", &["num_retries"]),
    (
        "envoy.extensions.filters.http.jwt_authn.v3.JwtHeader",
        &["name", "value_prefix"],
    ),
    (
        "envoy.extensions.filters.http.jwt_authn.v3.JwtClaimToHeader",
        &["header_name", "claim_name"],
    ),
    (
        "envoy.extensions.filters.http.jwt_authn.v3.ProviderWithAudiences",
        &["provider_name", "audiences"],
    ),
    (
        "envoy.extensions.filters.http.jwt_authn.v3.JwtRequirement",
        &[
            "provider_name",
            "provider_and_audiences",
            "requires_any",
            "requires_all",
            "allow_missing_or_failed",
            "allow_missing",
        ],
    ),
    (
        "envoy.extensions.filters.http.jwt_authn.v3.JwtRequirementOrList",
        &["requirements"],
    ),
    (
        "envoy.extensions.filters.http.jwt_authn.v3.JwtRequirementAndList",
        &["requirements"],
    ),
    (
        "envoy.extensions.filters.http.jwt_authn.v3.RequirementRule",
        &["match", "requires", "requirement_name"],
    ),
    (
        "envoy.extensions.filters.http.jwt_authn.v3.PerRouteConfig",
        &["disabled", "requirement_name"],
    ),
    (
        "envoy.config.core.v3.GrpcMethodList.Service",
        &["name", "method_names"],
    ),
    (
        "envoy.extensions.filters.network.connection_limit.v3.ConnectionLimit",
        &["stat_prefix", "max_connections", "delay"],
    ),
    (
        "envoy.extensions.filters.network.rbac.v3.RBAC",
        &[
            "rules",
            "shadow_rules",
            "shadow_rules_stat_prefix",
            "stat_prefix",
            "enforcement_type",
        ],
    ),
    (
        "envoy.extensions.filters.http.rbac.v3.RBAC",
        &[
            "rules",
            "rules_stat_prefix",
            "shadow_rules",
            "shadow_rules_stat_prefix",
        ],
    ),
    (
        "envoy.extensions.filters.http.rbac.v3.RBACPerRoute",
        &["rbac"],
    ),
    ("envoy.config.rbac.v3.RBAC", &["action", "policies"]),
    (
        "envoy.config.rbac.v3.Policy",
        &["permissions", "principals"],
    ),
    (
        "envoy.config.rbac.v3.Permission",
        &[
            "and_rules",
            "or_rules",
            "any",
            "header",
            "url_path",
            "destination_ip",
            "destination_port",
            "destination_port_range",
            "not_rule",
            "requested_server_name",
            "metadata",
        ],
    ),
    ("envoy.config.rbac.v3.Permission.Set", &["rules"]),
    (
        "envoy.config.rbac.v3.Principal",
        &[
            "and_ids",
            "or_ids",
            "any",
            "authenticated",
            "source_ip",
            "direct_remote_ip",
            "remote_ip",
            "header",
            "url_path",
            "not_id",
            "metadata",
        ],
    ),
    ("envoy.config.rbac.v3.Principal.Set", &["ids"]),
    (
        "envoy.config.rbac.v3.Principal.Authenticated",
        &["principal_name"],
    ),
    ("envoy.type.matcher.v3.PathMatcher", &["path"]),
    (
        "envoy.extensions.filters.http.compressor.v3.Compressor",
        &[
            "content_length",
            "content_type",
            "disable_on_etag_header",
            "remove_accept_encoding_header",
            "runtime_enabled",
            "compressor_library",
            "response_direction_config",
            "choose_first",
        ],
    ),
    (
        "envoy.extensions.filters.http.compressor.v3.Compressor.ResponseDirectionConfig",
        &[
            "common_config",
            "disable_on_etag_header",
            "weaken_etag_on_compress",
            "remove_accept_encoding_header",
            "uncompressible_response_codes",
        ],
    ),
    (
        "envoy.extensions.filters.http.compressor.v3.Compressor.CommonDirectionConfig",
        &[
            "enabled",
            "min_content_length",
            "content_type",
            "content_type_matcher",
        ],
    ),
    (
        "envoy.config.core.v3.RuntimeFeatureFlag",
        &["default_value", "runtime_key"],
    ),
    (
        "envoy.extensions.compression.gzip.compressor.v3.Gzip",
        &[
            "memory_level",
            "compression_level",
            "compression_strategy",
            "window_bits",
            "chunk_size",
        ],
    ),
    (
        "envoy.extensions.compression.brotli.compressor.v3.Brotli",
        &[
            "quality",
            "encoder_mode",
            "window_bits",
            "input_block_bits",
            "chunk_size",
            "disable_literal_context_modeling",
        ],
    ),
    (
        "envoy.extensions.compression.zstd.compressor.v3.Zstd",
        &[
            "compression_level",
            "enable_checksum",
            "strategy",
            "chunk_size",
        ],
    ),
    (
        "envoy.extensions.filters.http.fault.v3.HTTPFault",
        &[
            "delay",
            "abort",
            "upstream_cluster",
            "headers",
            "downstream_nodes",
            "max_active_faults",
            "delay_percent_runtime",
            "abort_percent_runtime",
            "delay_duration_runtime",
            "abort_http_status_runtime",
            "max_active_faults_runtime",
            "abort_grpc_status_runtime",
            "disable_downstream_cluster_stats",
        ],
    ),
    (
        "envoy.extensions.filters.common.fault.v3.FaultDelay",
        &["fixed_delay", "header_delay", "percentage"],
    ),
    (
        "envoy.extensions.filters.common.fault.v3.FaultDelay.HeaderDelay",
        &[],
    ),
    (
        "envoy.extensions.filters.http.fault.v3.FaultAbort",
        &["http_status", "grpc_status", "header_abort", "percentage"],
    ),
    (
        "envoy.extensions.filters.http.fault.v3.FaultAbort.HeaderAbort",
        &[],
    ),
    (
        "envoy.config.accesslog.v3.AccessLog",
        &["name", "typed_config", "filter"],
    ),
    (
        "envoy.extensions.access_loggers.open_telemetry.v3.OpenTelemetryAccessLogConfig",
        &[
            "common_config",
            "grpc_service",
            "log_name",
            "body",
            "attributes",
            "resource_attributes",
            "disable_builtin_labels",
            "stat_prefix",
            "buffer_flush_interval",
            "buffer_size_bytes",
        ],
    ),
    (
        "envoy.extensions.access_loggers.grpc.v3.CommonGrpcAccessLogConfig",
        &[
            "log_name",
            "grpc_service",
            "transport_api_version",
            "buffer_flush_interval",
            "buffer_size_bytes",
            "filter_state_objects_to_log",
        ],
    ),
    ("opentelemetry.proto.common.v1.AnyValue", &["string_value"]),
    ("opentelemetry.proto.common.v1.KeyValueList", &["values"]),
    ("opentelemetry.proto.common.v1.KeyValue", &["key", "value"]),
    (
        "envoy.config.accesslog.v3.AccessLogFilter",
        &[
            "status_code_filter",
            "duration_filter",
            "not_health_check_filter",
            "traceable_filter",
            "runtime_filter",
            "and_filter",
            "or_filter",
            "header_filter",
            "response_flag_filter",
            "grpc_status_filter",
            "extension_filter",
        ],
    ),
    (
        "envoy.config.accesslog.v3.ExtensionFilter",
        &["name", "typed_config"],
    ),
    (
        "envoy.extensions.access_loggers.filters.cel.v3.ExpressionFilter",
        &["expression"],
    ),
    (
        "envoy.config.accesslog.v3.StatusCodeFilter",
        &["comparison"],
    ),
    ("envoy.config.accesslog.v3.DurationFilter", &["comparison"]),
    (
        "envoy.config.accesslog.v3.ComparisonFilter",
        &["op", "value"],
    ),
    (
        "envoy.config.core.v3.RuntimeUInt32",
        &["default_value", "runtime_key"],
    ),
    ("envoy.config.accesslog.v3.NotHealthCheckFilter", &[]),
    ("envoy.config.accesslog.v3.TraceableFilter", &[]),
    (
        "envoy.config.accesslog.v3.RuntimeFilter",
        &[
            "runtime_key",
            "percent_sampled",
            "use_independent_randomness",
        ],
    ),
    ("envoy.config.accesslog.v3.AndFilter", &["filters"]),
    ("envoy.config.accesslog.v3.OrFilter", &["filters"]),
    ("envoy.config.accesslog.v3.HeaderFilter", &["header"]),
    ("envoy.config.accesslog.v3.ResponseFlagFilter", &["flags"]),
    (
        "envoy.config.accesslog.v3.GrpcStatusFilter",
        &["statuses", "exclude"],
    ),
    (
        "envoy.extensions.access_loggers.file.v3.FileAccessLog",
        &["path", "log_format", "format"],
    ),
    (
        "envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
        &["log_format"],
    ),
    (
        "envoy.extensions.access_loggers.stream.v3.StderrAccessLog",
        &["log_format"],
    ),
    (
        "envoy.config.core.v3.SubstitutionFormatString",
        &[
            "text_format",
            "text_format_source",
            "json_format",
            "omit_empty_values",
        ],
    ),
    (
        "envoy.config.core.v3.DataSource",
        &["inline_string", "inline_bytes", "filename"],
    ),
    (
        "envoy.config.route.v3.RouteConfiguration",
        &[
            "name",
            "virtual_hosts",
            "request_headers_to_add",
            "request_headers_to_remove",
            "response_headers_to_add",
            "response_headers_to_remove",
            "most_specific_header_mutations_wins",
            "typed_per_filter_config",
            "validate_clusters",
            "ignore_port_in_host_matching",
            "max_direct_response_body_size_bytes",
            "request_mirror_policies",
        ],
    ),
    (
        "envoy.config.route.v3.VirtualHost",
        &[
            "name",
            "domains",
            "routes",
            "typed_per_filter_config",
            "request_headers_to_add",
            "request_headers_to_remove",
            "response_headers_to_add",
            "response_headers_to_remove",
            "include_request_attempt_count",
            "include_attempt_count_in_response",
            "retry_policy",
            "request_mirror_policies",
            "hedge_policy",
            "virtual_clusters",
        ],
    ),
    ("envoy.config.route.v3.VirtualCluster", &["name", "headers"]),
    (
        "envoy.config.route.v3.RouteAction.HashPolicy",
        &[
            "header",
            "cookie",
            "connection_properties",
            "query_parameter",
            "filter_state",
            "terminal",
        ],
    ),
    (
        "envoy.config.route.v3.RouteAction.HashPolicy.Header",
        &["header_name", "regex_rewrite"],
    ),
    (
        "envoy.config.route.v3.RouteAction.HashPolicy.Cookie",
        &["name", "ttl", "path", "attributes"],
    ),
    (
        "envoy.config.route.v3.RouteAction.HashPolicy.CookieAttribute",
        &["name", "value"],
    ),
    (
        "envoy.config.route.v3.RouteAction.HashPolicy.ConnectionProperties",
        &["source_ip"],
    ),
    (
        "envoy.config.route.v3.RouteAction.HashPolicy.QueryParameter",
        &["name"],
    ),
    (
        "envoy.config.route.v3.RouteAction.HashPolicy.FilterState",
        &["key"],
    ),
    (
        "envoy.config.route.v3.Route",
        &[
            "name",
            "match",
            "route",
            "redirect",
            "direct_response",
            "metadata",
            "typed_per_filter_config",
            "request_headers_to_add",
            "request_headers_to_remove",
            "response_headers_to_add",
            "response_headers_to_remove",
            "decorator",
        ],
    ),
    (
        "envoy.config.core.v3.HeaderValueOption",
        &["header", "append", "append_action", "keep_empty_value"],
    ),
    (
        "envoy.config.core.v3.HeaderValue",
        &["key", "value", "raw_value"],
    ),
    (
        "envoy.config.route.v3.RouteMatch",
        &[
            "prefix",
            "path",
            "safe_regex",
            "path_separated_prefix",
            "case_sensitive",
            "headers",
            "query_parameters",
            "grpc",
            "runtime_fraction",
        ],
    ),
    (
        "envoy.config.route.v3.RouteMatch.GrpcRouteMatchOptions",
        &[],
    ),
    (
        "envoy.config.route.v3.HeaderMatcher",
        &[
            "name",
            "exact_match",
            "safe_regex_match",
            "range_match",
            "present_match",
            "prefix_match",
            "suffix_match",
            "contains_match",
            "string_match",
            "invert_match",
            "treat_missing_header_as_empty",
        ],
    ),
    (
        "envoy.config.route.v3.QueryParameterMatcher",
        &["name", "string_match", "present_match"],
    ),
    (
        "envoy.type.matcher.v3.StringMatcher",
        &[
            "exact",
            "prefix",
            "suffix",
            "contains",
            "safe_regex",
            "ignore_case",
        ],
    ),
    (
        "envoy.type.matcher.v3.RegexMatcher",
        &["regex", "google_re2"],
    ),
    ("envoy.type.matcher.v3.RegexMatcher.GoogleRE2", &[]),
    (
        "envoy.type.matcher.v3.RegexMatchAndSubstitute",
        &["pattern", "substitution"],
    ),
    ("envoy.type.v3.Int64Range", &["start", "end"]),
    (
        "envoy.config.core.v3.RuntimeFractionalPercent",
        &["default_value", "runtime_key"],
    ),
    (
        "envoy.type.v3.FractionalPercent",
        &["numerator", "denominator"],
    ),
    (
        "envoy.config.route.v3.RouteAction",
        &[
            "cluster",
            "weighted_clusters",
            "cluster_header",
            "prefix_rewrite",
            "regex_rewrite",
            "host_rewrite_literal",
            "host_rewrite_header",
            "auto_host_rewrite",
            "timeout",
            "idle_timeout",
            "upgrade_configs",
            "max_grpc_timeout",
            "grpc_timeout_offset",
            "max_stream_duration",
            "retry_policy",
            "request_mirror_policies",
            "hedge_policy",
            "hash_policy",
        ],
    ),
    (
        "envoy.config.route.v3.HedgePolicy",
        &["initial_requests", "hedge_on_per_try_timeout"],
    ),
    (
        "envoy.config.route.v3.RouteAction.RequestMirrorPolicy",
        &[
            "cluster",
            "cluster_header",
            "runtime_fraction",
            "trace_sampled",
            "disable_shadow_host_suffix_append",
        ],
    ),
    (
        "envoy.config.route.v3.RetryPolicy",
        &[
            "retry_on",
            "num_retries",
            "per_try_timeout",
            "per_try_idle_timeout",
            "retry_priority",
            "retry_host_predicate",
            "host_selection_retry_max_attempts",
            "retriable_status_codes",
            "retry_back_off",
            "rate_limited_retry_back_off",
            "retriable_headers",
            "retriable_request_headers",
        ],
    ),
    (
        "envoy.config.route.v3.RetryPolicy.RetryHostPredicate",
        &["name", "typed_config"],
    ),
    (
        "envoy.config.route.v3.RetryPolicy.RetryPriority",
        &["name", "typed_config"],
    ),
    (
        "envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate",
        &[],
    ),
    (
        "envoy.extensions.retry.host.omit_canary_hosts.v3.OmitCanaryHostsPredicate",
        &[],
    ),
    (
        "envoy.extensions.retry.host.omit_host_metadata.v3.OmitHostMetadataConfig",
        &["metadata_match"],
    ),
    (
        "envoy.extensions.retry.priority.previous_priorities.v3.PreviousPrioritiesConfig",
        &["update_frequency"],
    ),
    (
        "envoy.config.route.v3.RetryPolicy.RetryBackOff",
        &["base_interval", "max_interval"],
    ),
    (
        "envoy.config.route.v3.RetryPolicy.RateLimitedRetryBackOff",
        &["reset_headers", "max_interval"],
    ),
    (
        "envoy.config.route.v3.RetryPolicy.ResetHeader",
        &["name", "format"],
    ),
    (
        "envoy.config.route.v3.RouteAction.UpgradeConfig",
        &["upgrade_type", "enabled"],
    ),
    (
        "envoy.config.route.v3.RedirectAction",
        &[
            "https_redirect",
            "scheme_redirect",
            "host_redirect",
            "port_redirect",
            "path_redirect",
            "prefix_rewrite",
            "regex_rewrite",
            "response_code",
            "strip_query",
        ],
    ),
    (
        "envoy.config.route.v3.DirectResponseAction",
        &["status", "body"],
    ),
    (
        "envoy.config.route.v3.WeightedCluster",
        &["clusters", "total_weight"],
    ),
    (
        "envoy.config.route.v3.WeightedCluster.ClusterWeight",
        &[
            "name",
            "weight",
            "request_headers_to_add",
            "request_headers_to_remove",
            "response_headers_to_add",
            "response_headers_to_remove",
        ],
    ),
    (
        "envoy.config.cluster.v3.Cluster",
        &[
            "name",
            "filters",
            "type",
            "lb_policy",
            "connect_timeout",
            "load_assignment",
            "typed_extension_protocol_options",
            "http2_protocol_options",
            "dns_refresh_rate",
            "respect_dns_ttl",
            "dns_lookup_family",
            "per_connection_buffer_limit_bytes",
            "metadata",
            "circuit_breakers",
            "original_dst_lb_config",
            "upstream_bind_config",
            "eds_cluster_config",
            "alt_stat_name",
            "max_requests_per_connection",
            "upstream_connection_options",
            "common_lb_config",
            "cleanup_interval",
            "least_request_lb_config",
            "outlier_detection",
            "ring_hash_lb_config",
            "maglev_lb_config",
            "health_checks",
            "load_balancing_policy",
            "transport_socket",
            "transport_socket_matches",
        ],
    ),
    (
        "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager.SetCurrentClientCertDetails",
        &["subject", "cert", "chain", "dns", "uri"],
    ),
    (
        "envoy.config.cluster.v3.Cluster.TransportSocketMatch",
        &["name", "match", "transport_socket"],
    ),
    (
        "envoy.config.core.v3.TransportSocket",
        &["name", "typed_config"],
    ),
    (
        "envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer",
        &[],
    ),
    (
        "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
        &["common_tls_context", "sni", "max_session_keys"],
    ),
    (
        "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
        &["common_tls_context", "require_client_certificate"],
    ),
    (
        "envoy.extensions.transport_sockets.tls.v3.CommonTlsContext",
        &[
            "tls_params",
            "tls_certificates",
            "tls_certificate_sds_secret_configs",
            "validation_context",
            "validation_context_sds_secret_config",
            "combined_validation_context",
            "alpn_protocols",
        ],
    ),
    (
        "envoy.extensions.transport_sockets.tls.v3.CommonTlsContext.CombinedCertificateValidationContext",
        &[
            "default_validation_context",
            "validation_context_sds_secret_config",
        ],
    ),
    (
        "envoy.extensions.transport_sockets.tls.v3.TlsParameters",
        &[
            "tls_minimum_protocol_version",
            "tls_maximum_protocol_version",
            "cipher_suites",
            "ecdh_curves",
        ],
    ),
    (
        "envoy.extensions.transport_sockets.tls.v3.TlsCertificate",
        &["certificate_chain", "private_key"],
    ),
    (
        "envoy.extensions.transport_sockets.tls.v3.CertificateValidationContext",
        &[
            "trusted_ca",
            "match_subject_alt_names",
            "match_typed_subject_alt_names",
            "custom_validator_config",
        ],
    ),
    (
        "envoy.extensions.transport_sockets.tls.v3.SPIFFECertValidatorConfig",
        &["trust_domains"],
    ),
    (
        "envoy.extensions.transport_sockets.tls.v3.SPIFFECertValidatorConfig.TrustDomain",
        &["name", "trust_bundle"],
    ),
    (
        "envoy.extensions.transport_sockets.tls.v3.SubjectAltNameMatcher",
        &["san_type", "matcher"],
    ),
    (
        "envoy.extensions.transport_sockets.tls.v3.SdsSecretConfig",
        &["name", "sds_config"],
    ),
    (
        "envoy.extensions.transport_sockets.tls.v3.Secret",
        &["name", "tls_certificate", "validation_context"],
    ),
    ("envoy.config.cluster.v3.LoadBalancingPolicy", &["policies"]),
    (
        "envoy.config.cluster.v3.LoadBalancingPolicy.Policy",
        &["typed_extension_config"],
    ),
    (
        "envoy.extensions.load_balancing_policies.round_robin.v3.RoundRobin",
        &["locality_lb_config"],
    ),
    (
        "envoy.extensions.load_balancing_policies.random.v3.Random",
        &["locality_lb_config"],
    ),
    (
        "envoy.extensions.load_balancing_policies.least_request.v3.LeastRequest",
        &[
            "choice_count",
            "active_request_bias",
            "locality_lb_config",
            "enable_full_scan",
            "selection_method",
        ],
    ),
    (
        "envoy.extensions.load_balancing_policies.ring_hash.v3.RingHash",
        &[
            "hash_function",
            "minimum_ring_size",
            "maximum_ring_size",
            "use_hostname_for_hashing",
            "consistent_hashing_lb_config",
        ],
    ),
    (
        "envoy.extensions.load_balancing_policies.maglev.v3.Maglev",
        &["table_size", "consistent_hashing_lb_config"],
    ),
    (
        "envoy.extensions.load_balancing_policies.cluster_provided.v3.ClusterProvided",
        &[],
    ),
    (
        "envoy.extensions.load_balancing_policies.common.v3.LocalityLbConfig",
        &["locality_weighted_lb_config"],
    ),
    (
        "envoy.extensions.load_balancing_policies.common.v3.LocalityLbConfig.LocalityWeightedLbConfig",
        &[],
    ),
    (
        "envoy.extensions.load_balancing_policies.common.v3.ConsistentHashingLbConfig",
        &["use_hostname_for_hashing"],
    ),
    (
        "envoy.config.core.v3.HealthCheck",
        &[
            "timeout",
            "interval",
            "initial_jitter",
            "interval_jitter",
            "interval_jitter_percent",
            "unhealthy_threshold",
            "healthy_threshold",
            "no_traffic_interval",
            "no_traffic_healthy_interval",
            "unhealthy_interval",
            "unhealthy_edge_interval",
            "healthy_edge_interval",
            "http_health_check",
            "tcp_health_check",
            "grpc_health_check",
        ],
    ),
    (
        "envoy.config.core.v3.HealthCheck.HttpHealthCheck",
        &[
            "host",
            "path",
            "request_headers_to_add",
            "request_headers_to_remove",
            "expected_statuses",
            "codec_client_type",
        ],
    ),
    (
        "envoy.config.core.v3.HealthCheck.TcpHealthCheck",
        &["send", "receive"],
    ),
    (
        "envoy.config.core.v3.HealthCheck.GrpcHealthCheck",
        &["service_name", "authority"],
    ),
    (
        "envoy.config.core.v3.HealthCheck.Payload",
        &["text", "binary"],
    ),
    ("envoy.type.v3.Int64Range", &["start", "end"]),
    (
        "envoy.config.cluster.v3.Cluster.RingHashLbConfig",
        &["minimum_ring_size", "maximum_ring_size", "hash_function"],
    ),
    (
        "envoy.config.cluster.v3.Cluster.MaglevLbConfig",
        &["table_size"],
    ),
    (
        "envoy.config.cluster.v3.Cluster.CommonLbConfig.ConsistentHashingLbConfig",
        &["use_hostname_for_hashing"],
    ),
    (
        "envoy.config.cluster.v3.OutlierDetection",
        &[
            "consecutive_5xx",
            "interval",
            "base_ejection_time",
            "max_ejection_percent",
            "enforcing_consecutive_5xx",
            "enforcing_success_rate",
            "success_rate_minimum_hosts",
            "success_rate_request_volume",
            "success_rate_stdev_factor",
            "consecutive_gateway_failure",
            "enforcing_consecutive_gateway_failure",
            "split_external_local_origin_errors",
            "consecutive_local_origin_failure",
            "enforcing_consecutive_local_origin_failure",
            "enforcing_local_origin_success_rate",
            "failure_percentage_threshold",
            "enforcing_failure_percentage",
            "enforcing_failure_percentage_local_origin",
            "failure_percentage_minimum_hosts",
            "failure_percentage_request_volume",
            "max_ejection_time",
            "max_ejection_time_jitter",
            "successful_active_health_check_uneject_host",
        ],
    ),
    (
        "envoy.config.cluster.v3.Cluster.CommonLbConfig",
        &[
            "healthy_panic_threshold",
            "locality_weighted_lb_config",
            "consistent_hashing_lb_config",
        ],
    ),
    (
        "envoy.config.cluster.v3.Cluster.CommonLbConfig.LocalityWeightedLbConfig",
        &[],
    ),
    (
        "envoy.config.cluster.v3.Cluster.LeastRequestLbConfig",
        &["choice_count", "active_request_bias"],
    ),
    (
        "envoy.config.route.v3.Decorator",
        &["operation", "propagate"],
    ),
    (
        "envoy.config.route.v3.RouteAction.MaxStreamDuration",
        &[
            "max_stream_duration",
            "grpc_timeout_header_max",
            "grpc_timeout_header_offset",
        ],
    ),
    (
        "envoy.extensions.filters.network.http_connection_manager.v3.RequestIDExtension",
        &["typed_config"],
    ),
    (
        "envoy.extensions.request_id.uuid.v3.UuidRequestIdConfig",
        &["pack_trace_reason", "use_request_id_for_trace_sampling"],
    ),
    (
        "envoy.config.cluster.v3.UpstreamConnectionOptions",
        &["tcp_keepalive"],
    ),
    (
        "envoy.config.core.v3.TcpKeepalive",
        &["keepalive_probes", "keepalive_time", "keepalive_interval"],
    ),
    (
        "envoy.config.cluster.v3.Cluster.EdsClusterConfig",
        &["eds_config", "service_name"],
    ),
    (
        "envoy.config.cluster.v3.Cluster.OriginalDstLbConfig",
        &["use_http_header", "http_header_name"],
    ),
    (
        "envoy.config.core.v3.BindConfig",
        &["source_address", "socket_options", "extra_source_addresses"],
    ),
    ("envoy.config.core.v3.ExtraSourceAddress", &["address"]),
    (
        "envoy.config.core.v3.SocketOption",
        &["description", "level", "name", "int_value", "state"],
    ),
    ("envoy.config.cluster.v3.CircuitBreakers", &["thresholds"]),
    (
        "envoy.config.cluster.v3.CircuitBreakers.Thresholds",
        &[
            "priority",
            "max_connections",
            "max_pending_requests",
            "max_requests",
            "max_retries",
            "track_remaining",
            "retry_budget",
        ],
    ),
    ("envoy.type.v3.Percent", &["value"]),
    (
        "envoy.config.core.v3.RuntimeDouble",
        &["default_value", "runtime_key"],
    ),
    (
        "envoy.config.cluster.v3.CircuitBreakers.Thresholds.RetryBudget",
        &["budget_percent", "min_retry_concurrency"],
    ),
    (
        "envoy.config.endpoint.v3.ClusterLoadAssignment",
        &["cluster_name", "endpoints", "policy"],
    ),
    (
        "envoy.config.endpoint.v3.ClusterLoadAssignment.Policy",
        &["overprovisioning_factor"],
    ),
    (
        "envoy.config.endpoint.v3.LocalityLbEndpoints",
        &[
            "locality",
            "lb_endpoints",
            "metadata",
            "load_balancing_weight",
            "priority",
        ],
    ),
    (
        "envoy.config.endpoint.v3.LbEndpoint",
        &[
            "endpoint",
            "health_status",
            "metadata",
            "load_balancing_weight",
        ],
    ),
    (
        "envoy.config.endpoint.v3.Endpoint",
        &["address", "hostname"],
    ),
    (
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        &[
            "explicit_http_config",
            "use_downstream_protocol_config",
            "common_http_protocol_options",
        ],
    ),
    (
        "envoy.config.core.v3.HttpProtocolOptions",
        &[
            "max_requests_per_connection",
            "idle_timeout",
            "max_connection_duration",
            "max_stream_duration",
        ],
    ),
    (
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions.ExplicitHttpConfig",
        &["http_protocol_options", "http2_protocol_options"],
    ),
    (
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions.UseDownstreamHttpConfig",
        &["http_protocol_options", "http2_protocol_options"],
    ),
    (
        "envoy.config.core.v3.Http1ProtocolOptions",
        &["accept_http_10", "default_host_for_http_10"],
    ),
    (
        "envoy.config.core.v3.Http2ProtocolOptions",
        &[
            "max_concurrent_streams",
            "initial_stream_window_size",
            "initial_connection_window_size",
            "connection_keepalive",
        ],
    ),
    (
        "envoy.config.core.v3.KeepaliveSettings",
        &["interval", "timeout"],
    ),
];

/// Every message type that is supported, with its fields; used by the docs test.
pub fn supported_fields() -> &'static [(&'static str, &'static [&'static str])] {
    FIELDS
}

pub(super) fn allowed(type_name: &str) -> Option<&'static [&'static str]> {
    FIELDS
        .iter()
        .find(|(t, _)| *t == type_name)
        .map(|(_, f)| *f)
}

/// Walks a message and fails on the first set field pilotfish does not implement,
/// naming its path, e.g. `static_resources.clusters[0].outlier_detection: not supported`.
pub fn check(msg: &DynamicMessage, path: &str) -> Result<(), String> {
    let desc = msg.descriptor();
    let type_name = desc.full_name();
    if OPEN.contains(&type_name) {
        return Ok(());
    }
    let Some(fields) = allowed(type_name) else {
        return Err(format!("{}: {type_name} is not supported", display(path)));
    };
    for (field, value) in msg.fields() {
        let field_path = join(path, field.name());
        if !fields.contains(&field.name()) {
            return Err(format!("{field_path}: not supported"));
        }
        // Inside a typed extension (`typed_config`), the error names the extension.
        let label = msg
            .get_field_by_name("name")
            .and_then(|v| v.as_str().map(str::to_owned))
            .filter(|n| !n.is_empty() && field.name() == "typed_config");
        check_value(value, &field_path, path, label.as_deref())?;
    }
    Ok(())
}

fn check_value(value: &Value, path: &str, parent: &str, label: Option<&str>) -> Result<(), String> {
    match value {
        Value::Message(m) if m.descriptor().full_name() == "google.protobuf.Any" => {
            let url = m
                .get_field_by_name("type_url")
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            let name = proto::type_name(&url).to_owned();
            let shown = label.unwrap_or(&name);
            let shown_path = if label.is_some() { parent } else { path };
            // Plain values (a matcher action's `StringValue`) may travel in an `Any`
            // too; the code reading the `Any` checks its type.
            if allowed(&name).is_none() && !OPEN.contains(&name.as_str()) {
                return Err(format!("{} ({shown}): not supported", display(shown_path)));
            }
            let desc =
                proto::descriptor(&name).ok_or_else(|| format!("{path}: unknown type {name}"))?;
            let bytes = m
                .get_field_by_name("value")
                .and_then(|v| v.as_bytes().cloned())
                .unwrap_or_default();
            let inner = DynamicMessage::decode(desc, bytes)
                .map_err(|e| format!("{path}: cannot decode {name}: {e}"))?;
            check(&inner, path)
        }
        Value::Message(m) => check(m, path),
        Value::List(items) => items
            .iter()
            .enumerate()
            .try_for_each(|(i, v)| check_value(v, &format!("{path}[{i}]"), parent, label)),
        Value::Map(map) => map.iter().try_for_each(|(k, v)| {
            let key = format!("{path}[{}]", map_key(k));
            // Map entries keyed by extension name (typed_extension_protocol_options).
            let label = match k {
                prost_reflect::MapKey::String(s) => Some(s.as_str()),
                _ => label,
            };
            check_value(v, &key, &key, label)
        }),
        _ => Ok(()),
    }
}

fn map_key(k: &prost_reflect::MapKey) -> String {
    match k {
        prost_reflect::MapKey::String(s) => format!("\"{s}\""),
        other => format!("{other:?}"),
    }
}

fn join(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_owned()
    } else {
        format!("{path}.{field}")
    }
}

fn display(path: &str) -> &str {
    if path.is_empty() { "<root>" } else { path }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// docs/compatibility.md must list every supported message with each of its fields.
    #[test]
    fn docs_list_every_supported_field() {
        let doc = include_str!("../../docs/compatibility.md");
        for (ty, fields) in FIELDS {
            let row = doc
                .lines()
                .find(|l| l.starts_with(&format!("| `{ty}` |")))
                .unwrap_or_else(|| panic!("docs/compatibility.md has no row for {ty}"));
            for f in *fields {
                assert!(
                    row.contains(&format!("`{f}`")),
                    "docs row for {ty} lacks `{f}`"
                );
            }
            let listed = row.matches('`').count() / 2 - 1;
            assert_eq!(
                listed,
                fields.len(),
                "docs row for {ty} lists fields pilotfish rejects"
            );
        }
        for ty in OPEN {
            assert!(
                doc.contains(&format!("`{ty}`")),
                "docs/compatibility.md does not name {ty}"
            );
        }
    }

    /// The RouteConfiguration messages, every field marked supported or rejected, as
    /// docs/compatibility.md must show them (generated from the Envoy API itself).
    fn route_field_table() -> String {
        const ROUTE_MESSAGES: &[&str] = &[
            "envoy.config.route.v3.RouteConfiguration",
            "envoy.config.route.v3.VirtualHost",
            "envoy.config.route.v3.Route",
            "envoy.config.route.v3.RouteMatch",
            "envoy.config.route.v3.HeaderMatcher",
            "envoy.config.route.v3.QueryParameterMatcher",
            "envoy.config.route.v3.RouteAction",
            "envoy.config.route.v3.WeightedCluster",
            "envoy.config.route.v3.WeightedCluster.ClusterWeight",
            "envoy.config.route.v3.RedirectAction",
            "envoy.config.route.v3.DirectResponseAction",
        ];
        let mut out = String::from("| message | supported | rejected |\n|---|---|---|\n");
        for ty in ROUTE_MESSAGES {
            let desc = proto::descriptor(ty).unwrap();
            let ok = allowed(ty).unwrap_or(&[]);
            let (yes, no): (Vec<String>, Vec<String>) = desc
                .fields()
                .map(|f| f.name().to_owned())
                .partition(|f| ok.contains(&f.as_str()));
            let list = |v: &[String]| {
                v.iter()
                    .map(|f| format!("`{f}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            out.push_str(&format!("| `{ty}` | {} | {} |\n", list(&yes), list(&no)));
        }
        out
    }

    #[test]
    fn docs_mark_every_route_configuration_field() {
        let doc = include_str!("../../docs/compatibility.md");
        let table = route_field_table();
        assert!(
            doc.contains(&table),
            "docs/compatibility.md must contain this table (regenerate it):\n{table}"
        );
    }

    /// The byte scanner gives the verdict of the reflective walk.
    #[test]
    fn encoded_check_agrees_with_the_reflective_check() {
        let cases = [
            (
                "envoy.config.cluster.v3.Cluster",
                "name: c\ntype: STATIC\n",
                true,
            ),
            (
                "envoy.config.cluster.v3.Cluster",
                "name: c\nclose_connections_on_host_health_failure: true\n",
                false,
            ),
            (
                "envoy.config.cluster.v3.Cluster",
                "name: c\ntyped_extension_protocol_options:\n  x:\n    \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n    explicit_http_config: { http2_protocol_options: {} }\n",
                true,
            ),
            (
                "envoy.config.cluster.v3.Cluster",
                "name: c\ntyped_extension_protocol_options:\n  x:\n    \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n    common_http_protocol_options: { max_headers_count: 10 }\n",
                false,
            ),
            (
                "envoy.config.listener.v3.Listener",
                "name: l\nfilter_chains: [{ filters: [{ name: t, typed_config: { \"@type\": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: s, cluster: c } }] }]\n",
                true,
            ),
            (
                "envoy.config.listener.v3.Listener",
                "name: l\nfilter_chains: [{ filters: [{ name: t, typed_config: { \"@type\": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: s, cluster: c, tunneling_config: { hostname: x } } }] }]\n",
                false,
            ),
            (
                "envoy.config.listener.v3.Listener",
                "name: l\nfilter_chains: [{ filters: [{ name: t, typed_config: { \"@type\": type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC, stat_prefix: x } }] }]\n",
                true,
            ),
            (
                "envoy.config.listener.v3.Listener",
                "name: l\nfilter_chains: [{ filters: [{ name: t, typed_config: { \"@type\": type.googleapis.com/envoy.extensions.filters.network.local_ratelimit.v3.LocalRateLimit, stat_prefix: x } }] }]\n",
                false,
            ),
            (
                "envoy.config.route.v3.RouteConfiguration",
                "name: r\nvirtual_hosts: [{ name: v, domains: [\"*\"], routes: [{ match: { prefix: /, headers: [{ name: x, string_match: { exact: y } }] }, route: { cluster: c, timeout: 5s } }] }]\n",
                true,
            ),
            (
                "envoy.config.route.v3.RouteConfiguration",
                "name: r\nvirtual_hosts: [{ name: v, domains: [\"*\"], routes: [{ match: { prefix: / }, route: { cluster: c, rate_limits: [{ actions: [{ remote_address: {} }] }] } }] }]\n",
                false,
            ),
        ];
        for (ty, yaml, ok) in cases {
            let desc = proto::descriptor(ty).unwrap();
            let v: serde_json::Value = serde_yaml::from_str(yaml).unwrap();
            let msg = proto::from_json(desc.clone(), v).unwrap();
            use prost::Message;
            let bytes = msg.encode_to_vec();
            assert_eq!(check(&msg, "").is_ok(), ok, "{yaml}");
            assert_eq!(
                crate::config::encoded_check::check(ty, &bytes),
                ok,
                "{yaml}"
            );
        }
    }

    #[test]
    fn every_listed_type_exists_in_the_envoy_api() {
        for (ty, fields) in FIELDS {
            let desc = proto::descriptor(ty).unwrap_or_else(|| panic!("{ty} is not an Envoy type"));
            for f in *fields {
                assert!(desc.get_field_by_name(f).is_some(), "{ty} has no field {f}");
            }
        }
        for ty in OPEN {
            assert!(proto::descriptor(ty).is_some(), "{ty} is not a known type");
        }
    }
}
