//! The peer workload as Istio's exchanges describe it: decoded from the `Struct` an
//! istio-proxy or pilotfish peer sends (the HTTP `x-envoy-peer-metadata` header, the
//! TCP exchange frame), or from an endpoint's `istio.workload` metadata. `istio.stats`
//! labels its metrics with it.
use std::sync::{Arc, OnceLock};

use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};

/// What the metrics need of a peer. Empty when the peer did not say.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Peer {
    pub workload: String,
    pub namespace: String,
    pub canonical_service: String,
    pub canonical_revision: String,
    pub app: String,
    pub version: String,
    pub cluster: String,
    pub identity: String,
}

/// Where a TCP exchange leaves what it learned: unset while the frame is awaited,
/// `Some` once read, `None` when the peer sent none (Istio's `peer_not_found`).
pub type PeerSlot = Arc<OnceLock<Option<Arc<Peer>>>>;

impl Peer {
    /// The peer from a `Struct` (the reduced node metadata), as istio-proxy maps it:
    /// app and version prefer the `app.kubernetes.io/*` labels.
    pub fn from_struct(s: &Struct) -> Peer {
        let string = |v: Option<&Value>| match v.and_then(|v| v.kind.as_ref()) {
            Some(Kind::StringValue(s)) => s.clone(),
            _ => String::new(),
        };
        let field = |k: &str| string(s.fields.get(k));
        let labels = match s.fields.get("LABELS").and_then(|v| v.kind.as_ref()) {
            Some(Kind::StructValue(l)) => Some(l),
            _ => None,
        };
        let label = |names: &[&str]| {
            names
                .iter()
                .map(|n| string(labels.and_then(|l| l.fields.get(*n))))
                .find(|v| !v.is_empty())
                .unwrap_or_default()
        };
        Peer {
            workload: field("WORKLOAD_NAME"),
            namespace: field("NAMESPACE"),
            canonical_service: label(&["service.istio.io/canonical-name"]),
            canonical_revision: label(&["service.istio.io/canonical-revision"]),
            app: label(&["app.kubernetes.io/name", "app"]),
            version: label(&["app.kubernetes.io/version", "version"]),
            cluster: field("CLUSTER_ID"),
            identity: field("IDENTITY"),
        }
    }

    /// The peer from protobuf `Struct` bytes; `None` when they are not one.
    pub fn decode(bytes: &[u8]) -> Option<Peer> {
        use prost::Message;
        Struct::decode(bytes).ok().map(|s| Peer::from_struct(&s))
    }

    /// The peer from an `x-envoy-peer-metadata` header value (base64 `Struct`).
    pub fn from_header(value: &[u8]) -> Option<Peer> {
        let bytes = data_encoding::BASE64.decode(value).ok()?;
        Peer::decode(&bytes)
    }

    /// The peer from an endpoint's `filter_metadata.istio.workload`:
    /// `workload;namespace;canonical service;canonical revision;cluster` (at least five
    /// parts; istiod's form). App, version and identity stay unknown.
    pub fn from_workload_metadata(s: &str) -> Option<Peer> {
        let parts: Vec<&str> = s.split(';').collect();
        if parts.len() < 5 {
            return None;
        }
        Some(Peer {
            workload: parts[0].into(),
            namespace: parts[1].into(),
            canonical_service: parts[2].into(),
            canonical_revision: parts[3].into(),
            cluster: parts[4].into(),
            ..Default::default()
        })
    }
}

/// The peer `Struct` inside a TCP exchange frame's `Any(Struct)`: its
/// `x-envoy-peer-metadata` field.
pub fn from_frame(any: &[u8]) -> Option<Peer> {
    use prost::Message;
    let any = envoy_types::pb::google::protobuf::Any::decode(any).ok()?;
    if !any.type_url.ends_with("/google.protobuf.Struct") {
        return None;
    }
    let outer = Struct::decode(any.value.as_slice()).ok()?;
    match outer
        .fields
        .get("x-envoy-peer-metadata")
        .and_then(|v| v.kind.as_ref())
    {
        Some(Kind::StructValue(s)) => Some(Peer::from_struct(s)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::istio::peer_metadata::{Field, encode_struct};
    use std::collections::BTreeMap;

    #[test]
    fn decodes_what_the_exchanges_send() {
        let mut labels = BTreeMap::new();
        for (k, v) in [
            ("service.istio.io/canonical-name", "ratings"),
            ("service.istio.io/canonical-revision", "v1"),
            ("app", "ratings-app"),
            ("app.kubernetes.io/name", "ratings-k8s"),
            ("version", "v1"),
        ] {
            labels.insert(k.to_owned(), Field::Str(v.to_owned()));
        }
        let mut node = BTreeMap::new();
        node.insert("WORKLOAD_NAME".into(), Field::Str("ratings-v1".into()));
        node.insert("NAMESPACE".into(), Field::Str("default".into()));
        node.insert("CLUSTER_ID".into(), Field::Str("Kubernetes".into()));
        node.insert("LABELS".into(), Field::Struct(labels));
        let encoded = data_encoding::BASE64.encode(&encode_struct(&node));
        let p = Peer::from_header(encoded.as_bytes()).unwrap();
        assert_eq!(p.workload, "ratings-v1");
        assert_eq!(p.namespace, "default");
        assert_eq!(p.canonical_service, "ratings");
        assert_eq!(p.canonical_revision, "v1");
        assert_eq!(p.app, "ratings-k8s", "app.kubernetes.io/name first");
        assert_eq!(p.version, "v1");
        assert_eq!(p.cluster, "Kubernetes");
        assert_eq!(p.identity, "");
        assert!(Peer::from_header(b"not base64!").is_none());

        let w = Peer::from_workload_metadata("reviews-v2;default;reviews;v2;Kubernetes").unwrap();
        assert_eq!(
            (w.workload.as_str(), w.canonical_revision.as_str()),
            ("reviews-v2", "v2")
        );
        assert!(Peer::from_workload_metadata("a;b;c").is_none());
    }
}
