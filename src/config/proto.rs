//! The Envoy API descriptor pool and the conversions between proto3 JSON/YAML,
//! reflective messages (for strict field checks and `/config_dump`) and the typed
//! `envoy-types` structs the compiler reads.
use crate::sync::MutexExt;
use std::sync::Mutex;

use prost::{Message, Name};
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor, SerializeOptions};

/// The decoded pool is large (tens of MB) and only needed while config is decoded,
/// checked or dumped, so it is decoded on first use and can be released after.
static POOL: Mutex<Option<DescriptorPool>> = Mutex::new(None);

/// The pool holding every Envoy v3 message (and the well-known types they use).
#[allow(
    clippy::expect_used,
    reason = "the descriptor set is built into the binary"
)]
pub fn pool() -> DescriptorPool {
    let mut pool = POOL.locked();
    pool.get_or_insert_with(|| {
        let packed: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/envoy_descriptors.bin.zz"));
        let bytes = miniz_oxide::inflate::decompress_to_vec_zlib(packed)
            .expect("the embedded Envoy descriptor set inflates");
        DescriptorPool::decode(bytes.as_slice()).expect("the embedded Envoy descriptor set decodes")
    })
    .clone()
}

/// Drops the decoded pool (it is decoded again if needed). Called once startup has
/// compiled the config, after each burst of xDS updates and after a `/config_dump`,
/// to keep the steady-state footprint small.
pub fn release_pool() {
    POOL.locked().take();
}

/// Descriptor of a message by its full name, e.g. `envoy.config.bootstrap.v3.Bootstrap`.
pub fn descriptor(full_name: &str) -> Option<MessageDescriptor> {
    pool().get_message_by_name(full_name)
}

/// Parses a proto3-JSON value (from JSON or YAML) as the named message. Errors name the
/// JSON path of the offending field.
pub fn from_json(
    desc: MessageDescriptor,
    value: serde_json::Value,
) -> Result<DynamicMessage, String> {
    let mut track = serde_path_to_error::Track::new();
    let de = serde_path_to_error::Deserializer::new(value, &mut track);
    DynamicMessage::deserialize(desc, de).map_err(|e| {
        let path = track.path().to_string();
        if path.is_empty() || path == "." {
            e.to_string()
        } else {
            format!("{path}: {e}")
        }
    })
}

/// Removes the keys of a proto3-JSON value that name no field of `desc` (at any depth,
/// inside `Any`s by their `@type` too) and returns their paths: Envoy's
/// `--allow-unknown-static-fields`, which warns about such fields instead of failing.
pub fn strip_unknown(
    desc: &MessageDescriptor,
    value: &mut serde_json::Value,
    path: &str,
) -> Vec<String> {
    let mut out = Vec::new();
    strip(desc, value, path, &mut out);
    out
}

fn strip(
    desc: &MessageDescriptor,
    value: &mut serde_json::Value,
    path: &str,
    out: &mut Vec<String>,
) {
    use prost_reflect::Kind;
    let name = desc.full_name();
    // Well-known types have JSON forms of their own (a Struct takes any key).
    if name.starts_with("google.protobuf.") && name != "google.protobuf.Any" {
        return;
    }
    let Some(obj) = value.as_object_mut() else {
        return;
    };
    let desc = if name == "google.protobuf.Any" {
        match obj
            .get("@type")
            .and_then(|t| t.as_str())
            .and_then(|t| descriptor(type_name(t)))
        {
            Some(d) => d,
            None => return,
        }
    } else {
        desc.clone()
    };
    let keys: Vec<String> = obj.keys().cloned().collect();
    for k in keys {
        let at = if path.is_empty() {
            k.clone()
        } else {
            format!("{path}.{k}")
        };
        if k == "@type" {
            continue;
        }
        let field = desc
            .get_field_by_name(&k)
            .or_else(|| desc.get_field_by_json_name(&k));
        let Some(field) = field else {
            obj.remove(&k);
            out.push(at);
            continue;
        };
        let Kind::Message(m) = field.kind() else {
            continue;
        };
        let Some(v) = obj.get_mut(&k) else { continue };
        if field.is_map() {
            let value_kind = m.map_entry_value_field().kind();
            if let (Kind::Message(vm), Some(map)) = (value_kind, v.as_object_mut()) {
                for (mk, mv) in map.iter_mut() {
                    strip(&vm, mv, &format!("{at}[\"{mk}\"]"), out);
                }
            }
        } else if let Some(items) = v.as_array_mut() {
            for (i, item) in items.iter_mut().enumerate() {
                strip(&m, item, &format!("{at}[{i}]"), out);
            }
        } else {
            strip(&m, v, &at, out);
        }
    }
}

/// Converts a reflective message into the typed struct of the same proto type.
pub fn to_typed<M: Message + Default>(msg: &DynamicMessage) -> Result<M, String> {
    M::decode(msg.encode_to_vec().as_slice()).map_err(|e| e.to_string())
}

/// Converts a typed struct into its reflective form.
#[allow(
    clippy::expect_used,
    reason = "the descriptor pool is built into the binary"
)]
pub fn to_dynamic<M: Message + Name>(msg: &M) -> DynamicMessage {
    let desc = descriptor(&M::full_name()).expect("every envoy-types message is in the pool");
    DynamicMessage::decode(desc, msg.encode_to_vec().as_slice())
        .expect("a typed message re-decodes as itself")
}

/// Proto3 JSON of a typed message, with `@type` on every `Any`, as Envoy's admin prints it.
pub fn to_json<M: Message + Name>(msg: &M) -> serde_json::Value {
    dynamic_to_json(&to_dynamic(msg))
}

pub fn dynamic_to_json(msg: &DynamicMessage) -> serde_json::Value {
    let opts = SerializeOptions::new()
        .skip_default_fields(true)
        .use_proto_field_name(true);
    msg.serialize_with_options(serde_json::value::Serializer, &opts)
        .unwrap_or(serde_json::Value::Null)
}

/// Type name of an `Any` URL: `type.googleapis.com/a.b.C` → `a.b.C`.
pub fn type_name(type_url: &str) -> &str {
    type_url.rsplit('/').next().unwrap_or(type_url)
}

/// Decodes the typed payload of an `Any`, checking its type.
pub fn unpack<M: Message + Name + Default>(
    any: &envoy_types::pb::google::protobuf::Any,
) -> Result<M, String> {
    let got = type_name(&any.type_url);
    if got != M::full_name() {
        return Err(format!("expected {}, got {got}", M::full_name()));
    }
    M::decode(any.value.as_slice()).map_err(|e| e.to_string())
}

/// The proto3 JSON (field names as in the proto) of an `Any` whose type has no typed
/// struct (Istio's extension configs), checked against the descriptor pool.
pub fn any_to_json(
    any: &envoy_types::pb::google::protobuf::Any,
) -> Result<serde_json::Value, String> {
    let name = type_name(&any.type_url);
    let desc = descriptor(name).ok_or_else(|| format!("unknown type {name}"))?;
    let msg = DynamicMessage::decode(desc, any.value.as_slice()).map_err(|e| e.to_string())?;
    Ok(dynamic_to_json(&msg))
}

/// A message from YAML (proto3 JSON), for unit tests.
#[cfg(test)]
pub fn from_yaml_for_tests<M: Message + Name + Default>(yaml: &str) -> M {
    let v: serde_json::Value = serde_yaml::from_str(yaml).expect("YAML");
    let desc = descriptor(&M::full_name()).expect("a known message");
    to_typed(&from_json(desc, v).expect("valid proto3 JSON")).expect("decodes")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The comments of the Envoy protos (80% of the set) are stripped at build time:
    /// the decoded pool kept them, ~35 MB more whenever it is held (startup, a NACK's
    /// message, `/config_dump`).
    #[test]
    fn the_embedded_pool_carries_no_comments() {
        let pool = pool();
        assert!(pool.files().len() > 400, "the whole Envoy API is embedded");
        for file in pool.files() {
            assert!(
                file.file_descriptor_proto().source_code_info.is_none(),
                "{} keeps its comments",
                file.name()
            );
        }
        let bootstrap = descriptor("envoy.config.bootstrap.v3.Bootstrap").unwrap();
        assert!(bootstrap.get_field_by_name("static_resources").is_some());
    }
}
