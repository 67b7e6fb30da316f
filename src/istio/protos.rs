//! Descriptors of Istio's own extension configs, added to the Envoy descriptor pool at
//! build time (`build.rs` compiles this file; the library does not). Istio's build of
//! Envoy (istio-proxy) defines them; upstream Envoy and `envoy-types` do not. Written
//! from the schemas in istio/proxy (release-1.30; moved to envoy's `contrib/istio` with
//! the same package names), field names and numbers as there: istiod sends some as
//! plain `Any`s (their bytes must decode) and the rest in `TypedStruct`s (their JSON
//! keys must parse, unknown ones still rejected with their path).
use prost_types::{
    DescriptorProto, EnumDescriptorProto, EnumValueDescriptorProto, FieldDescriptorProto,
    FileDescriptorProto, OneofDescriptorProto,
    field_descriptor_proto::{Label, Type},
};

/// A field: `(name, number, type, type name for messages and enums)`.
struct F(&'static str, i32, Type, &'static str);

fn fields(list: &[F], label: Label) -> Vec<FieldDescriptorProto> {
    list.iter()
        .map(|F(name, number, ty, type_name)| FieldDescriptorProto {
            name: Some((*name).into()),
            json_name: Some(json_name(name)),
            number: Some(*number),
            label: Some(label as i32),
            r#type: Some(*ty as i32),
            type_name: (!type_name.is_empty()).then(|| (*type_name).into()),
            ..Default::default()
        })
        .collect()
}

fn json_name(name: &str) -> String {
    let mut out = String::new();
    let mut upper = false;
    for c in name.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.push(c.to_ascii_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

fn message(name: &str, singular: &[F], repeated: &[F]) -> DescriptorProto {
    let mut field = fields(singular, Label::Optional);
    field.extend(fields(repeated, Label::Repeated));
    field.sort_by_key(|f| f.number);
    DescriptorProto {
        name: Some(name.into()),
        field,
        ..Default::default()
    }
}

/// A message whose fields are all members of one `oneof`.
fn one_of(name: &str, group: &str, members: &[F]) -> DescriptorProto {
    let mut m = message(name, members, &[]);
    for f in &mut m.field {
        f.oneof_index = Some(0);
    }
    m.oneof_decl = vec![OneofDescriptorProto {
        name: Some(group.into()),
        ..Default::default()
    }];
    m
}

fn enumeration(name: &str, values: &[&str]) -> EnumDescriptorProto {
    EnumDescriptorProto {
        name: Some(name.into()),
        value: values
            .iter()
            .zip(0..)
            .map(|(n, i)| EnumValueDescriptorProto {
                name: Some((*n).into()),
                number: Some(i),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

fn file(
    name: &str,
    package: &str,
    deps: &[&str],
    messages: Vec<DescriptorProto>,
    enums: Vec<EnumDescriptorProto>,
) -> FileDescriptorProto {
    FileDescriptorProto {
        name: Some(name.into()),
        package: Some(package.into()),
        dependency: deps.iter().map(|d| (*d).into()).collect(),
        syntax: Some("proto3".into()),
        message_type: messages,
        enum_type: enums,
        ..Default::default()
    }
}

/// `stats.PluginConfig` (`istio.stats`, HTTP and network), the TCP metadata exchange
/// (`istio.metadata_exchange` on listeners and clusters), the HTTP peer metadata filter
/// and `istio.alpn`.
pub fn files() -> Vec<FileDescriptorProto> {
    use Type::*;
    const DURATION: &str = ".google.protobuf.Duration";
    let stats = file(
        "istio/stats/config.proto",
        "stats",
        &["google/protobuf/duration.proto"],
        vec![
            {
                let mut m = message(
                    "MetricConfig",
                    &[
                        F("name", 2, String, ""),
                        F("match", 4, String, ""),
                        F("drop", 5, Bool, ""),
                    ],
                    &[F("tags_to_remove", 3, String, "")],
                );
                // `dimensions`: map<string, string>.
                m.field.insert(
                    0,
                    FieldDescriptorProto {
                        name: Some("dimensions".into()),
                        json_name: Some("dimensions".into()),
                        number: Some(1),
                        label: Some(Label::Repeated as i32),
                        r#type: Some(Message as i32),
                        type_name: Some(".stats.MetricConfig.DimensionsEntry".into()),
                        ..Default::default()
                    },
                );
                let mut entry = message(
                    "DimensionsEntry",
                    &[F("key", 1, String, ""), F("value", 2, String, "")],
                    &[],
                );
                entry.options = Some(prost_types::MessageOptions {
                    map_entry: Some(true),
                    ..Default::default()
                });
                m.nested_type = vec![entry];
                m
            },
            message(
                "MetricDefinition",
                &[
                    F("name", 1, String, ""),
                    F("value", 2, String, ""),
                    F("type", 3, Enum, ".stats.MetricType"),
                ],
                &[],
            ),
            message(
                "PluginConfig",
                &[
                    F("disable_host_header_fallback", 6, Bool, ""),
                    F("tcp_reporting_duration", 7, Message, DURATION),
                    F("reporter", 10, Enum, ".stats.Reporter"),
                    F("rotation_interval", 11, Message, DURATION),
                    F("graceful_deletion_interval", 12, Message, DURATION),
                ],
                &[
                    F("metrics", 8, Message, ".stats.MetricConfig"),
                    F("definitions", 9, Message, ".stats.MetricDefinition"),
                ],
            ),
        ],
        vec![
            enumeration("MetricType", &["COUNTER", "GAUGE", "HISTOGRAM"]),
            enumeration("Reporter", &["UNSPECIFIED", "SERVER_GATEWAY"]),
        ],
    );
    let exchange = file(
        "istio/metadata_exchange/config.proto",
        "envoy.tcp.metadataexchange.config",
        &[],
        vec![message(
            "MetadataExchange",
            &[
                F("protocol", 1, String, ""),
                F("enable_discovery", 2, Bool, ""),
            ],
            &[F("additional_labels", 3, String, "")],
        )],
        vec![],
    );
    let peer_metadata = file(
        "istio/peer_metadata/config.proto",
        "io.istio.http.peer_metadata",
        &[],
        vec![{
            let mut m = message(
                "Config",
                &[F("shared_with_upstream", 5, Bool, "")],
                &[
                    F(
                        "downstream_discovery",
                        1,
                        Message,
                        ".io.istio.http.peer_metadata.Config.DiscoveryMethod",
                    ),
                    F(
                        "upstream_discovery",
                        2,
                        Message,
                        ".io.istio.http.peer_metadata.Config.DiscoveryMethod",
                    ),
                    F(
                        "downstream_propagation",
                        3,
                        Message,
                        ".io.istio.http.peer_metadata.Config.PropagationMethod",
                    ),
                    F(
                        "upstream_propagation",
                        4,
                        Message,
                        ".io.istio.http.peer_metadata.Config.PropagationMethod",
                    ),
                    F("additional_labels", 6, String, ""),
                ],
            );
            m.nested_type = vec![
                message("Baggage", &[], &[]),
                message("WorkloadDiscovery", &[], &[]),
                message(
                    "IstioHeaders",
                    &[F("skip_external_clusters", 1, Bool, "")],
                    &[],
                ),
                message(
                    "UpstreamFilterState",
                    &[F("peer_metadata_key", 1, String, "")],
                    &[],
                ),
                one_of(
                    "DiscoveryMethod",
                    "method_specifier",
                    &[
                        F(
                            "baggage",
                            1,
                            Message,
                            ".io.istio.http.peer_metadata.Config.Baggage",
                        ),
                        F(
                            "workload_discovery",
                            2,
                            Message,
                            ".io.istio.http.peer_metadata.Config.WorkloadDiscovery",
                        ),
                        F(
                            "istio_headers",
                            3,
                            Message,
                            ".io.istio.http.peer_metadata.Config.IstioHeaders",
                        ),
                        F(
                            "upstream_filter_state",
                            4,
                            Message,
                            ".io.istio.http.peer_metadata.Config.UpstreamFilterState",
                        ),
                    ],
                ),
                one_of(
                    "PropagationMethod",
                    "method_specifier",
                    &[
                        F(
                            "istio_headers",
                            1,
                            Message,
                            ".io.istio.http.peer_metadata.Config.IstioHeaders",
                        ),
                        F(
                            "baggage",
                            2,
                            Message,
                            ".io.istio.http.peer_metadata.Config.Baggage",
                        ),
                    ],
                ),
            ];
            m
        }],
        vec![],
    );
    const ALPN: &str = ".istio.envoy.config.filter.http.alpn.v2alpha1.FilterConfig";
    let alpn = file(
        "istio/alpn/config.proto",
        "istio.envoy.config.filter.http.alpn.v2alpha1",
        &[],
        vec![{
            let mut m = message(
                "FilterConfig",
                &[],
                &[F(
                    "alpn_override",
                    1,
                    Message,
                    const_format(ALPN, ".AlpnOverride"),
                )],
            );
            m.nested_type = vec![message(
                "AlpnOverride",
                &[F(
                    "upstream_protocol",
                    1,
                    Enum,
                    const_format(ALPN, ".Protocol"),
                )],
                &[F("alpn_override", 2, String, "")],
            )];
            m.enum_type = vec![enumeration("Protocol", &["HTTP10", "HTTP11", "HTTP2"])];
            m
        }],
        vec![],
    );
    vec![stats, exchange, peer_metadata, alpn]
}

/// `prefix + suffix` as a `'static` string (the descriptor lists borrow them).
fn const_format(prefix: &str, suffix: &str) -> &'static str {
    Box::leak(format!("{prefix}{suffix}").into_boxed_str())
}
