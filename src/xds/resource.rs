//! The four resource types, their type URLs, and decoding a resource strictly: a field
//! pilotfish does not implement rejects the resource with its path named.
use envoy_types::pb::google::protobuf::Any;
use prost::{Message, Name};
use prost_reflect::DynamicMessage;

use crate::config::{encoded_check, proto, support, typed_struct};

/// A resource type, in the order Envoy requests them: clusters, their endpoints, then
/// listeners and their routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Cluster,
    Endpoint,
    Listener,
    Route,
    /// SDS over ADS (`sds_config: { ads: {} }`).
    Secret,
}

const RESOURCE_WRAPPER: &str = "envoy.service.discovery.v3.Resource";

impl Kind {
    pub const ALL: [Kind; 5] = [
        Kind::Cluster,
        Kind::Endpoint,
        Kind::Listener,
        Kind::Route,
        Kind::Secret,
    ];

    pub fn type_name(self) -> &'static str {
        match self {
            Kind::Cluster => "envoy.config.cluster.v3.Cluster",
            Kind::Endpoint => "envoy.config.endpoint.v3.ClusterLoadAssignment",
            Kind::Listener => "envoy.config.listener.v3.Listener",
            Kind::Route => "envoy.config.route.v3.RouteConfiguration",
            Kind::Secret => "envoy.extensions.transport_sockets.tls.v3.Secret",
        }
    }

    pub fn type_url(self) -> String {
        format!("type.googleapis.com/{}", self.type_name())
    }

    pub fn from_type_url(url: &str) -> Option<Kind> {
        let name = proto::type_name(url);
        Kind::ALL.into_iter().find(|k| k.type_name() == name)
    }

    /// Envoy's short name, as in `lds`, `cds`.
    pub fn short(self) -> &'static str {
        match self {
            Kind::Cluster => "cds",
            Kind::Endpoint => "eds",
            Kind::Listener => "lds",
            Kind::Route => "rds",
            Kind::Secret => "sds",
        }
    }

    /// How errors name a resource of this kind.
    pub fn noun(self) -> &'static str {
        match self {
            Kind::Cluster => "cluster",
            Kind::Endpoint => "ClusterLoadAssignment",
            Kind::Listener => "listener",
            Kind::Route => "RouteConfiguration",
            Kind::Secret => "Secret",
        }
    }
}

/// An `Any` unwrapped from `envoy.service.discovery.v3.Resource` when a server wraps
/// state-of-the-world resources.
pub fn unwrap(any: Any) -> Result<Any, String> {
    if proto::type_name(&any.type_url) != RESOURCE_WRAPPER {
        return Ok(any);
    }
    let r = envoy_types::pb::envoy::service::discovery::v3::Resource::decode(any.value.as_slice())
        .map_err(|e| format!("cannot decode a Resource wrapper: {e}"))?;
    r.resource
        .ok_or_else(|| format!("Resource '{}' has no resource", r.name))
}

/// Decodes `any` as `M` (its type checked), without the field-by-field check.
pub fn decode_typed<M: Message + Name + Default>(kind: Kind, any: &Any) -> Result<M, String> {
    let got = proto::type_name(&any.type_url);
    if got != M::full_name() {
        return Err(format!("a {got} in a {} response", kind.type_name()));
    }
    M::decode(any.value.as_slice()).map_err(|e| format!("cannot decode {}: {e}", M::full_name()))
}

/// Checks `typed` (decoded from `any`) field by field, failing on the first field
/// pilotfish does not implement with its path. Returns it with every `TypedStruct`
/// wrapper inside resolved into the config it names.
pub fn check<M: Message + Default>(any: &Any, typed: M) -> Result<M, String> {
    let name = proto::type_name(&any.type_url);
    // The common case: allow-listed throughout, and so free of wrappers.
    if encoded_check::check(name, &any.value) {
        return Ok(typed);
    }
    let desc = proto::descriptor(name).ok_or_else(|| format!("unknown type {name}"))?;
    let mut dynamic = DynamicMessage::decode(desc, any.value.as_slice())
        .map_err(|e| format!("cannot decode {name}: {e}"))?;
    let resolved = typed_struct::resolve(&mut dynamic, "")?;
    support::check(&dynamic, "")?;
    if resolved {
        proto::to_typed(&dynamic)
    } else {
        Ok(typed)
    }
}

/// Decodes `any` as `M` and checks it field by field. Errors name the resource.
pub fn decode<M: Message + Name + Default>(kind: Kind, any: &Any) -> Result<M, String> {
    let msg = decode_typed(kind, any)?;
    check(any, msg)
}

/// Packs a typed message, as the config dump lists resources.
pub fn pack<M: Message + Name>(m: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: m.encode_to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;

    #[test]
    fn type_urls_round_trip() {
        for k in Kind::ALL {
            assert_eq!(Kind::from_type_url(&k.type_url()), Some(k));
        }
        assert_eq!(Kind::from_type_url("type.googleapis.com/x.Y"), None);
    }

    #[test]
    fn unsupported_fields_are_named() {
        let c = Cluster {
            name: "c".into(),
            close_connections_on_host_health_failure: true,
            ..Default::default()
        };
        let err = decode::<Cluster>(Kind::Cluster, &pack(&c)).unwrap_err();
        assert_eq!(
            err,
            "close_connections_on_host_health_failure: not supported"
        );
        let wrong = pack(&envoy_types::pb::envoy::config::listener::v3::Listener::default());
        assert!(
            decode::<Cluster>(Kind::Cluster, &wrong)
                .unwrap_err()
                .contains("Listener in a envoy.config.cluster.v3.Cluster response")
        );
    }

    #[test]
    fn wrapped_resources_are_unwrapped() {
        let c = pack(&Cluster {
            name: "c".into(),
            ..Default::default()
        });
        let wrapped = pack(&envoy_types::pb::envoy::service::discovery::v3::Resource {
            name: "c".into(),
            resource: Some(c.clone()),
            ..Default::default()
        });
        assert_eq!(unwrap(wrapped).unwrap(), c);
    }
}
