//! Istio's HTTP peer metadata exchange (`io.istio.http.peer_metadata.Config`, the
//! filter istiod names `istio.metadata_exchange` on every sidecar connection manager),
//! in its `istio_headers` form: an outbound request carries this workload's identity
//! in `x-envoy-peer-metadata` (a protobuf `Struct`, base64) and
//! `x-envoy-peer-metadata-id` (the node id); the server's sidecar takes them off the
//! request before the app sees it and answers with its own on the response, which the
//! client's sidecar takes off before its app sees it. Istio's stats on both sides read
//! the peer from them, so a pilotfish sidecar is labelled by its workload in an
//! istio-proxy peer's metrics.
//!
//! The `Struct` sent is the reduced set istio-proxy (1.24+) sends, not the whole node
//! metadata: `NAME`, `NAMESPACE`, `WORKLOAD_NAME`, `CLUSTER_ID`, `IDENTITY`, `OWNER`
//! (rebuilt from the workload type), `REGION`, `AVAILABILITY_ZONE`, and `LABELS` with
//! the canonical service and revision, `app`, `version` and the configured
//! `additional_labels`; serialized with sorted keys, computed once.
//!
//! `workload_discovery` is accepted and finds nothing: it needs the agent's workload
//! discovery (the `metadata_discovery` bootstrap extension, off for sidecars), and
//! istio-proxy without it finds nothing either. `baggage`, `upstream_filter_state`
//! and `shared_with_upstream` (waypoint features) are rejected.
use crate::sync::MutexExt;
use std::{collections::BTreeMap, sync::OnceLock};

use http::{HeaderMap, HeaderName, HeaderValue};
use serde_json::Value;

pub const TYPE: &str = "io.istio.http.peer_metadata.Config";
pub const ID_HEADER: HeaderName = HeaderName::from_static("x-envoy-peer-metadata-id");
pub const METADATA_HEADER: HeaderName = HeaderName::from_static("x-envoy-peer-metadata");

/// The compiled filter.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerMetadataConfig {
    /// `downstream_discovery` has `istio_headers`: the request's headers come off.
    downstream_discovery: bool,
    /// `upstream_discovery` has `istio_headers`: the response's headers come off.
    upstream_discovery: bool,
    /// `downstream_propagation` has `istio_headers`: the response carries ours.
    downstream_propagation: bool,
    /// `upstream_propagation` has `istio_headers`: the request carries ours, unless
    /// `skip_external_clusters` (the flag) and the cluster is outside the mesh.
    upstream_propagation: Option<bool>,
    /// `additional_labels`: node labels sent besides Istio's four.
    additional_labels: Vec<String>,
    /// Our two header values, looked up once (the traffic path takes no lock).
    local: OnceLock<&'static (HeaderValue, HeaderValue)>,
}

/// What the request carried, for the response's propagation and Istio's stats.
#[derive(Debug, Clone, Default)]
pub struct Seen {
    id: bool,
    metadata: bool,
    /// The downstream peer's `x-envoy-peer-metadata`.
    pub peer: Option<HeaderValue>,
}

pub fn compile(json: &Value, path: &str) -> Result<PeerMetadataConfig, String> {
    let mut out = PeerMetadataConfig::default();
    if json["shared_with_upstream"].as_bool() == Some(true) {
        return Err(format!(
            "{path}.shared_with_upstream: not supported (a waypoint's setting)"
        ));
    }
    let methods = |key: &str| json[key].as_array().cloned().unwrap_or_default();
    for key in ["downstream_discovery", "upstream_discovery"] {
        for (i, m) in methods(key).iter().enumerate() {
            let mpath = format!("{path}.{key}[{i}]");
            match method(m, &mpath)? {
                ("istio_headers", _) if key == "downstream_discovery" => {
                    out.downstream_discovery = true
                }
                ("istio_headers", _) => out.upstream_discovery = true,
                ("workload_discovery", _) => {}
                (other, _) => return Err(format!("{mpath}.{other}: not supported")),
            }
        }
    }
    for key in ["downstream_propagation", "upstream_propagation"] {
        for (i, m) in methods(key).iter().enumerate() {
            let mpath = format!("{path}.{key}[{i}]");
            match method(m, &mpath)? {
                ("istio_headers", _) if key == "downstream_propagation" => {
                    out.downstream_propagation = true
                }
                ("istio_headers", v) => {
                    out.upstream_propagation =
                        Some(v["skip_external_clusters"].as_bool().unwrap_or(false))
                }
                (other, _) => return Err(format!("{mpath}.{other}: not supported")),
            }
        }
    }
    out.additional_labels = methods("additional_labels")
        .iter()
        .filter_map(|l| l.as_str().map(str::to_owned))
        .collect();
    Ok(out)
}

/// The one member a method sets (its `oneof`), and its value.
fn method<'a>(m: &'a Value, path: &str) -> Result<(&'a str, &'a Value), String> {
    m.as_object()
        .and_then(|o| o.iter().next())
        .map(|(k, v)| (k.as_str(), v))
        .ok_or_else(|| format!("{path}: a method is required"))
}

/// What a cluster says about the exchange (`filter_metadata["istio"]`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClusterMarks {
    /// `external: true` (a MESH_EXTERNAL ServiceEntry) or the `PassthroughCluster`.
    pub external: bool,
    /// `disable_mx: true`: never sent (istiod's mark for ambient-only services).
    pub disable_mx: bool,
}

impl PeerMetadataConfig {
    /// On the request, before anything reads it: the peer's headers come off (noted
    /// for the response).
    pub fn on_request(&self, headers: &mut HeaderMap) -> Seen {
        if !self.downstream_discovery {
            return Seen::default();
        }
        let peer = headers.remove(METADATA_HEADER);
        Seen {
            id: headers.remove(ID_HEADER).is_some(),
            metadata: peer.is_some(),
            peer,
        }
    }

    /// On the request going upstream to a cluster so marked: ours go on.
    pub fn on_upstream_request(&self, headers: &mut HeaderMap, cluster: ClusterMarks) {
        let Some(skip_external) = self.upstream_propagation else {
            return;
        };
        if cluster.disable_mx || (skip_external && cluster.external) {
            return;
        }
        let (id, metadata) = self.local();
        headers.insert(ID_HEADER, id.clone());
        headers.insert(METADATA_HEADER, metadata.clone());
    }

    /// On the response going downstream: the upstream peer's come off, and ours go on
    /// for each the request carried. Returns the upstream peer's metadata.
    pub fn on_response(&self, headers: &mut HeaderMap, seen: &Seen) -> Option<HeaderValue> {
        let mut upstream = None;
        if self.upstream_discovery {
            headers.remove(ID_HEADER);
            upstream = headers.remove(METADATA_HEADER);
        }
        if self.downstream_propagation && (seen.id || seen.metadata) {
            let (id, metadata) = self.local();
            if seen.id {
                headers.insert(ID_HEADER, id.clone());
            }
            if seen.metadata {
                headers.insert(METADATA_HEADER, metadata.clone());
            }
        }
        upstream
    }

    fn local(&self) -> &(HeaderValue, HeaderValue) {
        self.local
            .get_or_init(|| local_headers(&self.additional_labels))
    }
}

/// This process's node, as the exchange describes it. Set once at startup.
static NODE: OnceLock<envoy_types::pb::envoy::config::core::v3::Node> = OnceLock::new();

pub fn set_local_node(node: &envoy_types::pb::envoy::config::core::v3::Node) {
    let _ = NODE.set(node.clone());
}

/// This process's node, once set.
pub fn node() -> Option<&'static envoy_types::pb::envoy::config::core::v3::Node> {
    NODE.get()
}

/// The header values for this node (computed once per set of additional labels).
#[allow(clippy::expect_used, reason = "base64 is a header value")]
fn local_headers(additional: &[String]) -> &'static (HeaderValue, HeaderValue) {
    type Made = Vec<(Vec<String>, &'static (HeaderValue, HeaderValue))>;
    static MADE: OnceLock<std::sync::Mutex<Made>> = OnceLock::new();
    let made = MADE.get_or_init(Default::default);
    let mut made = made.locked();
    if let Some((_, v)) = made.iter().find(|(k, _)| k == additional) {
        return v;
    }
    let (id, node) = local_node(additional);
    let id = HeaderValue::from_str(&id).unwrap_or(HeaderValue::from_static(""));
    let encoded = data_encoding::BASE64.encode(&encode_struct(&node));
    let metadata = HeaderValue::from_str(&encoded).expect("base64 is a valid header value");
    let v: &'static _ = Box::leak(Box::new((id, metadata)));
    made.push((additional.to_vec(), v));
    v
}

/// This node's id and its reduced `Struct`.
pub fn local_node(additional: &[String]) -> (String, BTreeMap<String, Field>) {
    let node = NODE.get().cloned().unwrap_or_default();
    (node.id.clone(), flatten(&node, additional))
}

/// A `Struct` value: a string or a nested struct (all the exchange uses).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Field {
    Str(String),
    Struct(BTreeMap<String, Field>),
}

/// The node reduced to what istio-proxy sends of it.
pub fn flatten(
    node: &envoy_types::pb::envoy::config::core::v3::Node,
    additional: &[String],
) -> BTreeMap<String, Field> {
    use envoy_types::pb::google::protobuf::value::Kind;
    let meta = node.metadata.as_ref();
    let string = |key: &str| -> String {
        meta.and_then(|m| m.fields.get(key))
            .and_then(|v| match &v.kind {
                Some(Kind::StringValue(s)) => Some(s.clone()),
                _ => None,
            })
            .unwrap_or_default()
    };
    let node_labels: BTreeMap<String, String> = meta
        .and_then(|m| m.fields.get("LABELS"))
        .and_then(|v| match &v.kind {
            Some(Kind::StructValue(s)) => Some(
                s.fields
                    .iter()
                    .filter_map(|(k, v)| match &v.kind {
                        Some(Kind::StringValue(s)) => Some((k.clone(), s.clone())),
                        _ => None,
                    })
                    .collect(),
            ),
            _ => None,
        })
        .unwrap_or_default();
    let label = |names: &[&str]| names.iter().find_map(|n| node_labels.get(*n).cloned());
    let mut labels = BTreeMap::new();
    for (key, from) in [
        (
            "service.istio.io/canonical-name",
            &["service.istio.io/canonical-name"][..],
        ),
        (
            "service.istio.io/canonical-revision",
            &["service.istio.io/canonical-revision"][..],
        ),
        ("app", &["app.kubernetes.io/name", "app"][..]),
        ("version", &["app.kubernetes.io/version", "version"][..]),
    ] {
        if let Some(v) = label(from).filter(|v| !v.is_empty()) {
            labels.insert(key.to_owned(), Field::Str(v));
        }
    }
    for name in additional {
        if let Some(v) = node_labels.get(name).filter(|v| !v.is_empty()) {
            labels.insert(name.clone(), Field::Str(v.clone()));
        }
    }
    let mut out = BTreeMap::new();
    let namespace = string("NAMESPACE");
    let workload = string("WORKLOAD_NAME");
    for key in [
        "NAME",
        "NAMESPACE",
        "WORKLOAD_NAME",
        "CLUSTER_ID",
        "IDENTITY",
    ] {
        let v = string(key);
        if !v.is_empty() {
            out.insert(key.to_owned(), Field::Str(v));
        }
    }
    if let Some(kind) = workload_type(&string("OWNER"), &workload) {
        out.insert(
            "OWNER".into(),
            Field::Str(format!(
                "kubernetes://apis/apps/v1/namespaces/{namespace}/{kind}s/{workload}"
            )),
        );
    }
    let locality = node.locality.as_ref();
    for (key, given) in [
        ("REGION", locality.map(|l| l.region.clone())),
        ("AVAILABILITY_ZONE", locality.map(|l| l.zone.clone())),
    ] {
        let v = given
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| string(key));
        if !v.is_empty() {
            out.insert(key.to_owned(), Field::Str(v));
        }
    }
    out.insert("LABELS".into(), Field::Struct(labels));
    out
}

/// The workload's kind from the node's `OWNER` (`…/deployments/<workload>`): one of
/// Istio's four, else none.
fn workload_type(owner: &str, workload: &str) -> Option<&'static str> {
    let rest = owner.strip_suffix(&format!("s/{workload}"))?;
    let kind = rest.rsplit('/').next()?;
    ["deployment", "cronjob", "job", "pod"]
        .into_iter()
        .find(|k| *k == kind)
}

/// Protobuf encoding of a `Struct` with its keys in order (as istio-proxy's
/// deterministic serialization).
pub fn encode_struct(fields: &BTreeMap<String, Field>) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in fields {
        let mut value = Vec::new();
        match v {
            // Value.string_value = 3
            Field::Str(s) => bytes_field(&mut value, 3, s.as_bytes()),
            // Value.struct_value = 5
            Field::Struct(m) => bytes_field(&mut value, 5, &encode_struct(m)),
        }
        let mut entry = Vec::new();
        bytes_field(&mut entry, 1, k.as_bytes());
        bytes_field(&mut entry, 2, &value);
        // Struct.fields = 1 (map entries)
        bytes_field(&mut out, 1, &entry);
    }
    out
}

pub fn bytes_field(out: &mut Vec<u8>, number: u32, bytes: &[u8]) {
    varint(out, u64::from(number << 3 | 2));
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::google::protobuf::{Struct, Value as PbValue, value::Kind};
    use prost::Message;

    fn s(v: &str) -> PbValue {
        PbValue {
            kind: Some(Kind::StringValue(v.into())),
        }
    }

    /// Istio's test node for the ratings server (istio/proxy testdata), reduced and
    /// encoded as istio-proxy sends it: the header value worked out from Istio's
    /// encoding rules, byte for byte.
    #[test]
    fn the_node_is_sent_as_istio_proxy_sends_it() {
        let labels = Struct {
            fields: [
                ("app", "ratings"),
                ("pod-template-hash", "84975bc778"),
                ("role", "server"),
                ("service.istio.io/canonical-name", "ratings"),
                ("service.istio.io/canonical-revision", "version-1"),
                ("version", "v1"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), s(v)))
            .collect(),
        };
        let mut meta: std::collections::HashMap<String, PbValue> = [
            ("NAME", "ratings-v1-84975bc778-pxz2w"),
            ("NAMESPACE", "default"),
            ("WORKLOAD_NAME", "ratings-v1"),
            ("CLUSTER_ID", "server-cluster"),
            ("ISTIO_VERSION", "1.30.0"),
            ("MESH_ID", "mesh"),
            (
                "OWNER",
                "kubernetes://apis/apps/v1/namespaces/default/deployments/ratings-v1",
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), s(v)))
        .collect();
        meta.insert(
            "LABELS".into(),
            PbValue {
                kind: Some(Kind::StructValue(labels)),
            },
        );
        let node = envoy_types::pb::envoy::config::core::v3::Node {
            id: "server".into(),
            metadata: Some(Struct { fields: meta }),
            ..Default::default()
        };
        let bytes = encode_struct(&flatten(&node, &[]));
        assert_eq!(bytes.len(), 356);
        assert_eq!(
            data_encoding::BASE64.encode(&bytes),
            "Ch4KCkNMVVNURVJfSUQSEBoOc2VydmVyLWNsdXN0ZXIKkwEKBkxBQkVMUxKIASqFAQoQCgNhcHASCRoHcmF0aW5ncwosCh9zZXJ2aWNlLmlzdGlvLmlvL2Nhbm9uaWNhbC1uYW1lEgkaB3JhdGluZ3MKMgojc2VydmljZS5pc3Rpby5pby9jYW5vbmljYWwtcmV2aXNpb24SCxoJdmVyc2lvbi0xCg8KB3ZlcnNpb24SBBoCdjEKJQoETkFNRRIdGhtyYXRpbmdzLXYxLTg0OTc1YmM3NzgtcHh6MncKFgoJTkFNRVNQQUNFEgkaB2RlZmF1bHQKTgoFT1dORVISRRpDa3ViZXJuZXRlczovL2FwaXMvYXBwcy92MS9uYW1lc3BhY2VzL2RlZmF1bHQvZGVwbG95bWVudHMvcmF0aW5ncy12MQodCg1XT1JLTE9BRF9OQU1FEgwaCnJhdGluZ3MtdjE="
        );
        // And it is a Struct any protobuf library reads back.
        let back = Struct::decode(bytes.as_slice()).unwrap();
        assert_eq!(back.fields["WORKLOAD_NAME"], s("ratings-v1"));
        assert!(!back.fields.contains_key("MESH_ID"));
        // An additional label travels when asked for.
        let with = flatten(&node, &["role".into()]);
        let Field::Struct(l) = &with["LABELS"] else {
            panic!()
        };
        assert_eq!(l["role"], Field::Str("server".into()));
    }

    fn outbound() -> PeerMetadataConfig {
        compile(
            &serde_json::json!({
                "upstream_discovery": [{"istio_headers": {}}, {"workload_discovery": {}}],
                "upstream_propagation": [{"istio_headers": {"skip_external_clusters": true}}],
            }),
            "f",
        )
        .unwrap()
    }

    #[test]
    fn outbound_sends_ours_and_takes_theirs_off_the_response() {
        let f = outbound();
        let mut req = HeaderMap::new();
        req.insert(ID_HEADER, HeaderValue::from_static("app-set"));
        assert!(
            !f.on_request(&mut req).id,
            "no downstream discovery outbound"
        );
        f.on_upstream_request(&mut req, ClusterMarks::default());
        assert_ne!(req[ID_HEADER], "app-set", "replaced by ours");
        assert!(req.contains_key(METADATA_HEADER));
        for marks in [
            ClusterMarks {
                external: true,
                disable_mx: false,
            },
            ClusterMarks {
                external: false,
                disable_mx: true,
            },
        ] {
            let mut req = HeaderMap::new();
            f.on_upstream_request(&mut req, marks);
            assert!(req.is_empty(), "{marks:?}");
        }
        let mut resp = HeaderMap::new();
        resp.insert(ID_HEADER, HeaderValue::from_static("peer"));
        resp.insert(METADATA_HEADER, HeaderValue::from_static("x"));
        f.on_response(&mut resp, &Seen::default());
        assert!(resp.is_empty());
    }

    #[test]
    fn inbound_takes_theirs_off_and_answers_each_it_got() {
        let f = compile(
            &serde_json::json!({
                "downstream_discovery": [{"istio_headers": {}}, {"workload_discovery": {}}],
                "downstream_propagation": [{"istio_headers": {}}],
            }),
            "f",
        )
        .unwrap();
        for (id, md) in [(false, false), (true, false), (true, true), (false, true)] {
            let mut req = HeaderMap::new();
            if id {
                req.insert(ID_HEADER, HeaderValue::from_static("peer"));
            }
            if md {
                req.insert(METADATA_HEADER, HeaderValue::from_static("x"));
            }
            let seen = f.on_request(&mut req);
            assert!(req.is_empty());
            let mut resp = HeaderMap::new();
            f.on_response(&mut resp, &seen);
            assert_eq!(
                (
                    resp.contains_key(ID_HEADER),
                    resp.contains_key(METADATA_HEADER)
                ),
                (id, md)
            );
        }
    }

    #[test]
    fn waypoint_methods_are_refused_by_name() {
        let e = compile(
            &serde_json::json!({"downstream_discovery": [{"baggage": {}}]}),
            "f",
        )
        .unwrap_err();
        assert_eq!(e, "f.downstream_discovery[0].baggage: not supported");
        let e = compile(&serde_json::json!({"shared_with_upstream": true}), "f").unwrap_err();
        assert!(
            e.starts_with("f.shared_with_upstream: not supported"),
            "{e}"
        );
    }
}
