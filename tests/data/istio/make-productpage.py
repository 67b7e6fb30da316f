"""Writes istiod's configuration for bookinfo's productpage-v1 sidecar (Istio 1.30 shape).

Usage: python3 tests/data/istio/make-productpage.py tests/data/istio/productpage-1.30.json
See README.md next to it for where each element comes from."""
import json, sys

NS = "default"
DOMAIN = "svc.cluster.local"
POD_IP = "10.244.0.10"
SERVICES = {  # name: (cluster ip, port, protocol, service account, pods[(name, version, ip)])
    "details": ("10.96.10.11", 9080, "http", "bookinfo-details", [("details-v1", "v1", "10.244.0.21")]),
    "productpage": ("10.96.10.12", 9080, "http", "bookinfo-productpage", [("productpage-v1", "v1", POD_IP)]),
    "ratings": ("10.96.10.13", 9080, "http", "bookinfo-ratings", [("ratings-v1", "v1", "10.244.0.22")]),
    "reviews": ("10.96.10.14", 9080, "http", "bookinfo-reviews",
                [("reviews-v1", "v1", "10.244.0.23"), ("reviews-v2", "v2", "10.244.0.24"), ("reviews-v3", "v3", "10.244.0.25")]),
    "mysqldb": ("10.96.10.15", 3306, "tcp", "default", [("mysqldb-v1", "v1", "10.244.0.26")]),
}
DR = {"reviews": ["v1", "v2", "v3"]}          # destination-rule-all.yaml (reviews part)
VS_CONFIG = "/apis/networking.istio.io/v1/namespaces/default/virtual-service/reviews"
DR_CONFIG = "/apis/networking.istio.io/v1/namespaces/default/destination-rule/reviews"

def T(t): return "type.googleapis.com/" + t
def fqdn(s): return f"{s}.{NS}.{DOMAIN}"
def ckey(s, port, subset=""): return f"outbound|{port}|{subset}|{fqdn(s)}"

SDS = lambda name: {"name": name, "sds_config": {
    "api_config_source": {"api_type": "GRPC", "transport_api_version": "V3",
                          "grpc_services": [{"envoy_grpc": {"cluster_name": "sds-grpc"}}],
                          "set_node_on_first_message_only": True},
    "initial_fetch_timeout": "0s", "resource_api_version": "V3"}}

STATS_OUT = {"name": "istio.stats", "typed_config": {"@type": T("stats.PluginConfig")}}
STATS_IN = {"name": "istio.stats", "typed_config": {"@type": T("stats.PluginConfig"), "disable_host_header_fallback": True}}
TCP_MX = {"name": "istio.metadata_exchange", "typed_config": {"@type": T("udpa.type.v1.TypedStruct"),
    "type_url": T("envoy.tcp.metadataexchange.config.MetadataExchange"),
    "value": {"protocol": "istio-peer-exchange", "enable_discovery": True}}}
def tcp_proxy(cluster):
    return {"name": "envoy.filters.network.tcp_proxy", "typed_config": {
        "@type": T("envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"),
        "stat_prefix": cluster, "cluster": cluster}}
ORIGINAL_DST = {"name": "envoy.filters.listener.original_dst",
    "typed_config": {"@type": T("envoy.extensions.filters.listener.original_dst.v3.OriginalDst")}}
def tls_inspector(disabled=None):
    f = {"name": "envoy.filters.listener.tls_inspector", "typed_config": {
        "@type": T("envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"), "initial_read_buffer_size": 512}}
    if disabled: f["filter_disabled"] = disabled
    return f
def http_inspector(disabled=None):
    f = {"name": "envoy.filters.listener.http_inspector",
         "typed_config": {"@type": T("envoy.extensions.filters.listener.http_inspector.v3.HttpInspector")}}
    if disabled: f["filter_disabled"] = disabled
    return f

def meta_tag(tag, key):
    return {"tag": tag, "metadata": {"kind": {"request": {}}, "metadata_key": {
        "key": "envoy.filters.http.rbac", "path": [{"key": key}]}}}
TRACING = {
    "client_sampling": {"value": 100}, "random_sampling": {"value": 1}, "overall_sampling": {"value": 100},
    "custom_tags": [
        meta_tag("istio.authorization.dry_run.allow_policy.name", "istio_dry_run_allow_shadow_effective_policy_id"),
        meta_tag("istio.authorization.dry_run.allow_policy.result", "istio_dry_run_allow_shadow_engine_result"),
        meta_tag("istio.authorization.dry_run.deny_policy.name", "istio_dry_run_deny_shadow_effective_policy_id"),
        meta_tag("istio.authorization.dry_run.deny_policy.result", "istio_dry_run_deny_shadow_engine_result"),
        {"tag": "istio.canonical_revision", "literal": {"value": "v1"}},
        {"tag": "istio.canonical_service", "literal": {"value": "productpage"}},
        {"tag": "istio.cluster_id", "literal": {"value": "Kubernetes"}},
        {"tag": "istio.mesh_id", "literal": {"value": "cluster.local"}},
        {"tag": "istio.namespace", "literal": {"value": "default"}}]}
REQUEST_ID = {"typed_config": {"@type": T("envoy.extensions.request_id.uuid.v3.UuidRequestIdConfig"),
                               "use_request_id_for_trace_sampling": True}}
def peer_metadata(direction):
    value = ({"upstream_discovery": [{"istio_headers": {}}, {"workload_discovery": {}}],
              "upstream_propagation": [{"istio_headers": {}}]} if direction == "out" else
             {"downstream_discovery": [{"istio_headers": {}}, {"workload_discovery": {}}],
              "downstream_propagation": [{"istio_headers": {}}]})
    return {"name": "istio.metadata_exchange", "typed_config": {"@type": T("udpa.type.v1.TypedStruct"),
        "type_url": T("io.istio.http.peer_metadata.Config"), "value": value}}
GRPC_STATS = {"name": "envoy.filters.http.grpc_stats", "typed_config": {
    "@type": T("envoy.extensions.filters.http.grpc_stats.v3.FilterConfig"),
    "emit_filter_state": True, "stats_for_all_methods": False}}
ALPN = {"name": "istio.alpn", "typed_config": {"@type": T("istio.envoy.config.filter.http.alpn.v2alpha1.FilterConfig"),
    "alpn_override": [{"alpn_override": ["istio-http/1.0", "istio", "http/1.0"]},
                      {"upstream_protocol": "HTTP11", "alpn_override": ["istio-http/1.1", "istio", "http/1.1"]},
                      {"upstream_protocol": "HTTP2", "alpn_override": ["istio-h2", "istio", "h2"]}]}}
FAULT = {"name": "envoy.filters.http.fault", "typed_config": {"@type": T("envoy.extensions.filters.http.fault.v3.HTTPFault")}}
CORS = {"name": "envoy.filters.http.cors", "typed_config": {"@type": T("envoy.extensions.filters.http.cors.v3.Cors")}}
ROUTER = {"name": "envoy.filters.http.router", "typed_config": {"@type": T("envoy.extensions.filters.http.router.v3.Router")}}
HCM_T = T("envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager")

def hcm_outbound(port):
    return {"name": "envoy.filters.network.http_connection_manager", "typed_config": {
        "@type": HCM_T, "stat_prefix": f"outbound_0.0.0.0_{port};",
        "rds": {"config_source": {"ads": {}, "initial_fetch_timeout": "0s", "resource_api_version": "V3"},
                "route_config_name": str(port)},
        "http_filters": [peer_metadata("out"), GRPC_STATS, ALPN, FAULT, CORS, STATS_OUT, ROUTER],
        "tracing": TRACING, "use_remote_address": False,
        "upgrade_configs": [{"upgrade_type": "websocket"}], "stream_idle_timeout": "0s",
        "normalize_path": True, "path_with_escaped_slashes_action": "KEEP_UNCHANGED",
        "request_id_extension": REQUEST_ID, "proxy_100_continue": True}}

def inbound_route(cluster, vhost, operation, name):
    return {"name": name, "virtual_hosts": [{"name": vhost, "domains": ["*"], "routes": [{
        "name": "default", "match": {"prefix": "/"},
        "route": {"cluster": cluster, "timeout": "0s",
                  "max_stream_duration": {"max_stream_duration": "0s", "grpc_timeout_header_max": "0s"},
                  "retry_policy": {"retry_on": "reset-before-request", "num_retries": 2}},
        "decorator": {"operation": operation}}]}], "validate_clusters": False}

def hcm_inbound(stat_prefix, route):
    return {"name": "envoy.filters.network.http_connection_manager", "typed_config": {
        "@type": HCM_T, "stat_prefix": stat_prefix, "route_config": route,
        "http_filters": [peer_metadata("in"), GRPC_STATS, FAULT, CORS, STATS_IN, ROUTER],
        "tracing": TRACING, "server_name": "istio-envoy", "use_remote_address": False,
        "forward_client_cert_details": "APPEND_FORWARD",
        "set_current_client_cert_details": {"subject": True, "dns": True, "uri": True},
        "upgrade_configs": [{"upgrade_type": "websocket"}], "stream_idle_timeout": "0s",
        "normalize_path": True, "path_with_escaped_slashes_action": "KEEP_UNCHANGED",
        "request_id_extension": REQUEST_ID, "proxy_100_continue": True}}

CIPHERS = ["ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384", "ECDHE-ECDSA-AES128-GCM-SHA256",
           "ECDHE-RSA-AES128-GCM-SHA256", "AES256-GCM-SHA384", "AES128-GCM-SHA256"]
def downstream_tls(alpn):
    return {"name": "envoy.transport_sockets.tls", "typed_config": {
        "@type": T("envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"),
        "common_tls_context": {
            "tls_params": {"tls_minimum_protocol_version": "TLSv1_2", "tls_maximum_protocol_version": "TLSv1_3",
                           "cipher_suites": CIPHERS},
            "alpn_protocols": alpn,
            "tls_certificate_sds_secret_configs": [SDS("default")],
            "combined_validation_context": {
                "default_validation_context": {"match_subject_alt_names": [{"prefix": "spiffe://cluster.local/"}]},
                "validation_context_sds_secret_config": SDS("ROOTCA")}},
        "require_client_certificate": True}}

HTTP_ALPN = ["h2", "http/1.1"]
TCP_ALPN = ["istio-peer-exchange", "h2", "http/1.1"]
passthrough_route = inbound_route("InboundPassthroughCluster", "inbound|http|0",
                                  f"{fqdn('productpage')}:0/*", "InboundPassthroughCluster")
port_route = inbound_route("inbound|9080||", "inbound|http|9080", f"{fqdn('productpage')}:9080/*", "inbound|9080||")

listeners = [
    {"name": "0.0.0.0_9080",
     "address": {"socket_address": {"address": "0.0.0.0", "port_value": 9080}},
     "filter_chains": [{"filter_chain_match": {"transport_protocol": "raw_buffer", "application_protocols": ["http/1.1", "h2c"]},
                        "filters": [hcm_outbound(9080)], "transport_socket_connect_timeout": "15s"}],
     "default_filter_chain": {"name": "PassthroughFilterChain", "filter_chain_match": {},
                              "filters": [STATS_OUT, tcp_proxy("PassthroughCluster")]},
     "listener_filters": [http_inspector()], "listener_filters_timeout": "0s",
     "continue_on_listener_filters_timeout": True, "traffic_direction": "OUTBOUND", "bind_to_port": False},
    {"name": "10.96.10.15_3306",
     "address": {"socket_address": {"address": "10.96.10.15", "port_value": 3306}},
     "filter_chains": [{"filters": [STATS_OUT, tcp_proxy(ckey("mysqldb", 3306))],
                        "transport_socket_connect_timeout": "15s"}],
     "listener_filters_timeout": "0s", "continue_on_listener_filters_timeout": True,
     "traffic_direction": "OUTBOUND", "bind_to_port": False},
    {"name": "virtualOutbound",
     "address": {"socket_address": {"address": "0.0.0.0", "port_value": 15001}},
     "filter_chains": [
         {"name": "virtualOutbound-blackhole", "filter_chain_match": {"destination_port": 15001},
          "filters": [STATS_OUT, tcp_proxy("BlackHoleCluster")]},
         {"name": "virtualOutbound-catchall-tcp", "filters": [STATS_OUT, tcp_proxy("PassthroughCluster")]}],
     "use_original_dst": True, "traffic_direction": "OUTBOUND", "max_connections_to_accept_per_socket_event": 1},
    {"name": "virtualInbound",
     "address": {"socket_address": {"address": "0.0.0.0", "port_value": 15006}},
     "listener_filters": [
         ORIGINAL_DST,
         tls_inspector({"destination_port_range": {"start": 15006, "end": 15007}}),
         http_inspector({"or_match": {"rules": [{"destination_port_range": {"start": 9080, "end": 9081}},
                                                {"destination_port_range": {"start": 15006, "end": 15007}}]}})],
     "listener_filters_timeout": "0s", "continue_on_listener_filters_timeout": True,
     "traffic_direction": "INBOUND", "max_connections_to_accept_per_socket_event": 1,
     "filter_chains": [
         {"name": "virtualInbound-blackhole", "filter_chain_match": {"destination_port": 15006},
          "filters": [TCP_MX, STATS_IN, tcp_proxy("BlackHoleCluster")]},
         {"name": "virtualInbound-catchall-http",
          "filter_chain_match": {"transport_protocol": "tls", "application_protocols": ["istio-http/1.0", "istio-http/1.1", "istio-h2"]},
          "filters": [TCP_MX, hcm_inbound("InboundPassthroughCluster;", passthrough_route)],
          "transport_socket": downstream_tls(HTTP_ALPN)},
         {"name": "virtualInbound-catchall-http",
          "filter_chain_match": {"transport_protocol": "raw_buffer", "application_protocols": ["http/1.1", "h2c"]},
          "filters": [TCP_MX, hcm_inbound("InboundPassthroughCluster;", passthrough_route)]},
         {"name": "virtualInbound",
          "filter_chain_match": {"transport_protocol": "tls", "application_protocols": ["istio-peer-exchange", "istio"]},
          "filters": [TCP_MX, STATS_IN, tcp_proxy("InboundPassthroughCluster")],
          "transport_socket": downstream_tls(TCP_ALPN)},
         {"name": "virtualInbound", "filter_chain_match": {"transport_protocol": "raw_buffer"},
          "filters": [TCP_MX, STATS_IN, tcp_proxy("InboundPassthroughCluster")]},
         {"name": "virtualInbound", "filter_chain_match": {"transport_protocol": "tls"},
          "filters": [TCP_MX, STATS_IN, tcp_proxy("InboundPassthroughCluster")]},
         {"name": "0.0.0.0_9080",
          "filter_chain_match": {"destination_port": 9080, "transport_protocol": "tls",
                                 "application_protocols": ["istio", "istio-peer-exchange", "istio-http/1.0", "istio-http/1.1", "istio-h2"]},
          "filters": [TCP_MX, hcm_inbound("inbound_0.0.0.0_9080;", port_route)],
          "transport_socket": downstream_tls(HTTP_ALPN)},
         {"name": "0.0.0.0_9080", "filter_chain_match": {"destination_port": 9080, "transport_protocol": "raw_buffer"},
          "filters": [TCP_MX, hcm_inbound("inbound_0.0.0.0_9080;", port_route)]}]},
]

CB = {"thresholds": [{"max_connections": 4294967295, "max_pending_requests": 4294967295,
                      "max_requests": 4294967295, "max_retries": 4294967295}]}
CLUSTER_MX = {"name": "istio.metadata_exchange", "typed_config": TCP_MX["typed_config"]}
PASSTHROUGH_OPTS = {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
    "@type": T("envoy.extensions.upstreams.http.v3.HttpProtocolOptions"),
    "common_http_protocol_options": {"idle_timeout": "300s"},
    "use_downstream_protocol_config": {"http_protocol_options": {}, "http2_protocol_options": {}}}}

def outbound_cluster(svc, port, subset=""):
    name = ckey(svc, port, subset)
    sa = SERVICES[svc][3]
    istio_meta = {"services": [{"host": fqdn(svc), "name": svc, "namespace": NS}]}
    if svc in DR:
        istio_meta = {"config": DR_CONFIG, **istio_meta}
    sni = f"outbound_.{port}_.{subset}_.{fqdn(svc)}"
    return {
        "name": name, "type": "EDS",
        "eds_cluster_config": {"eds_config": {"ads": {}, "initial_fetch_timeout": "0s", "resource_api_version": "V3"},
                               "service_name": name},
        "connect_timeout": "10s", "lb_policy": "LEAST_REQUEST", "circuit_breakers": CB,
        "common_lb_config": {}, "alt_stat_name": name + ";",
        "metadata": {"filter_metadata": {"istio": istio_meta}},
        "filters": [CLUSTER_MX],
        "transport_socket_matches": [
            {"name": "tlsMode-istio", "match": {"tlsMode": "istio"},
             "transport_socket": {"name": "envoy.transport_sockets.tls", "typed_config": {
                 "@type": T("envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"),
                 "common_tls_context": {
                     "tls_params": {"tls_minimum_protocol_version": "TLSv1_2", "tls_maximum_protocol_version": "TLSv1_3"},
                     "alpn_protocols": ["istio-peer-exchange", "istio"],
                     "tls_certificate_sds_secret_configs": [SDS("default")],
                     "combined_validation_context": {
                         "default_validation_context": {"match_subject_alt_names": [
                             {"exact": f"spiffe://cluster.local/ns/{NS}/sa/{sa}"}]},
                         "validation_context_sds_secret_config": SDS("ROOTCA")}},
                 "sni": sni}}},
            {"name": "tlsMode-disabled", "match": {},
             "transport_socket": {"name": "envoy.transport_sockets.raw_buffer",
                                  "typed_config": {"@type": T("envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer")}}}]}

clusters = []
for svc, (ip, port, proto, sa, pods) in SERVICES.items():
    clusters.append(outbound_cluster(svc, port))
    for subset in DR.get(svc, []):
        clusters.append(outbound_cluster(svc, port, subset))
clusters += [
    {"name": "BlackHoleCluster", "type": "STATIC", "connect_timeout": "10s", "alt_stat_name": "BlackHoleCluster;"},
    {"name": "PassthroughCluster", "type": "ORIGINAL_DST", "connect_timeout": "10s", "lb_policy": "CLUSTER_PROVIDED",
     "circuit_breakers": CB, "alt_stat_name": "PassthroughCluster;", "typed_extension_protocol_options": PASSTHROUGH_OPTS,
     "filters": [CLUSTER_MX]},
    {"name": "inbound|9080||", "type": "ORIGINAL_DST", "connect_timeout": "10s", "lb_policy": "CLUSTER_PROVIDED",
     "circuit_breakers": CB, "common_lb_config": {}, "alt_stat_name": "inbound|9080||;", "cleanup_interval": "9223372035s",
     "metadata": {"filter_metadata": {"istio": {"services": [{"host": fqdn("productpage"), "name": "productpage", "namespace": NS}]}}},
     "upstream_bind_config": {"source_address": {"address": "127.0.0.6", "port_value": 0}}},
    {"name": "InboundPassthroughCluster", "type": "ORIGINAL_DST", "connect_timeout": "10s", "lb_policy": "CLUSTER_PROVIDED",
     "circuit_breakers": CB, "alt_stat_name": "PassthroughCluster;", "typed_extension_protocol_options": PASSTHROUGH_OPTS,
     "upstream_bind_config": {"source_address": {"address": "127.0.0.6", "port_value": 0}}},
]

RETRY = {"retry_on": "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes", "num_retries": 2,
         "retry_host_predicate": [{"name": "envoy.retry_host_predicates.previous_hosts", "typed_config": {
             "@type": T("envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate")}}],
         "host_selection_retry_max_attempts": "5"}
def action(cluster):
    return {"cluster": cluster, "timeout": "0s", "retry_policy": RETRY, "max_grpc_timeout": "0s"}
def vhost(svc, port):
    ip = SERVICES[svc][0]
    h = fqdn(svc)
    vh = {"name": f"{h}:{port}", "domains": [h, h + ".", svc, f"{svc}.{NS}.svc", f"{svc}.{NS}", ip],
          "include_request_attempt_count": True}
    op = {"operation": f"{h}:{port}/*"}
    if svc == "reviews":   # virtual-service-reviews-test-v2.yaml
        meta = {"filter_metadata": {"istio": {"config": VS_CONFIG}}}
        vh["routes"] = [
            {"match": {"prefix": "/", "headers": [{"name": "end-user", "string_match": {"exact": "jason"}}]},
             "route": action(ckey(svc, port, "v2")), "metadata": meta, "decorator": op},
            {"match": {"prefix": "/"}, "route": action(ckey(svc, port, "v1")), "metadata": meta, "decorator": op}]
    else:
        vh["routes"] = [{"name": "default", "match": {"prefix": "/"}, "route": action(ckey(svc, port)), "decorator": op}]
    return vh
http_svcs = sorted(s for s, v in SERVICES.items() if v[2] == "http")
routes = [{"name": "9080",
           "virtual_hosts": [vhost(s, 9080) for s in http_svcs] + [
               {"name": "allow_any", "domains": ["*"], "routes": [{"name": "allow_any", "match": {"prefix": "/"},
                "route": {"cluster": "PassthroughCluster", "timeout": "0s", "max_grpc_timeout": "0s"}}],
                "include_request_attempt_count": True}],
           "validate_clusters": False, "max_direct_response_body_size_bytes": 1048576,
           "ignore_port_in_host_matching": True}]

def lb_endpoint(svc, pod, version, ip, port):
    return {"endpoint": {"address": {"socket_address": {"address": ip, "port_value": port}}},
            "health_status": "HEALTHY",
            "metadata": {"filter_metadata": {"envoy.transport_socket_match": {"tlsMode": "istio"},
                         "istio": {"workload": f"{pod};{NS};{svc};{version};Kubernetes"}}},
            "load_balancing_weight": 1}
endpoints = []
for svc, (ip, port, proto, sa, pods) in SERVICES.items():
    for subset in [""] + DR.get(svc, []):
        eps = [lb_endpoint(svc, p, v, pip, port) for (p, v, pip) in pods if subset in ("", v)]
        endpoints.append({"cluster_name": ckey(svc, port, subset),
                          "endpoints": [{"locality": {}, "lb_endpoints": eps, "load_balancing_weight": len(eps)}]})

json.dump({"listeners": listeners, "clusters": clusters, "routes": routes, "endpoints": endpoints},
          open(sys.argv[1], "w"), indent=1)
