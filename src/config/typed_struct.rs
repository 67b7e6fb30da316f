//! `udpa.type.v1.TypedStruct` / `xds.type.v3.TypedStruct`: an extension's config
//! carried as a type URL and a `Struct` (its proto3 JSON) instead of encoded bytes.
//! Istio wraps several configs this way (the internal listener in its bootstrap, its own
//! filters over xDS). Envoy reads such a wrapper wherever an `Any` is accepted as the
//! message it names; here each one is resolved into that plain `Any` before the
//! allow-list check and compilation, so everything downstream sees ordinary config. The
//! inner JSON is parsed against the descriptor pool like any other config: an unknown
//! field is an error naming its path, exactly as outside a wrapper.
use prost::Message;
use prost_reflect::{DynamicMessage, ReflectMessage, Value};

use super::proto;

const WRAPPERS: [&str; 2] = ["udpa.type.v1.TypedStruct", "xds.type.v3.TypedStruct"];

/// Replaces every `TypedStruct` inside `msg` (at any depth, inside other `Any`s too)
/// by the `Any` it describes. Returns whether anything changed.
pub fn resolve(msg: &mut DynamicMessage, path: &str) -> Result<bool, String> {
    if msg.descriptor().full_name() == "google.protobuf.Any" {
        return resolve_any(msg, path);
    }
    let mut changed = false;
    for (field, value) in msg.fields_mut() {
        let fpath = join(path, field.name());
        changed |= resolve_value(value, &fpath)?;
    }
    Ok(changed)
}

fn resolve_value(value: &mut Value, path: &str) -> Result<bool, String> {
    Ok(match value {
        Value::Message(m) => resolve(m, path)?,
        Value::List(items) => {
            let mut changed = false;
            for (i, v) in items.iter_mut().enumerate() {
                changed |= resolve_value(v, &format!("{path}[{i}]"))?;
            }
            changed
        }
        Value::Map(map) => {
            let mut changed = false;
            for (k, v) in map.iter_mut() {
                let key = match k {
                    prost_reflect::MapKey::String(s) => format!("{path}[\"{s}\"]"),
                    other => format!("{path}[{other:?}]"),
                };
                changed |= resolve_value(v, &key)?;
            }
            changed
        }
        _ => false,
    })
}

/// An `Any`: a wrapper becomes the message it names; any other payload of a known type
/// is searched for wrappers inside it.
fn resolve_any(any: &mut DynamicMessage, path: &str) -> Result<bool, String> {
    let url = any
        .get_field_by_name("type_url")
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    let bytes = any
        .get_field_by_name("value")
        .and_then(|v| v.as_bytes().cloned())
        .unwrap_or_default();
    let name = proto::type_name(&url);
    let Some(desc) = proto::descriptor(name) else {
        // Unknown types are the allow-list check's to report.
        return Ok(false);
    };
    let mut inner = DynamicMessage::decode(desc, bytes)
        .map_err(|e| format!("{path}: cannot decode {name}: {e}"))?;
    let (inner_url, mut resolved) = if WRAPPERS.contains(&name) {
        unwrap(&inner, path)?
    } else if resolve(&mut inner, path)? {
        (url, inner)
    } else {
        return Ok(false);
    };
    // A wrapper may hold another config that holds wrappers.
    resolve(&mut resolved, path)?;
    any.set_field_by_name("type_url", Value::String(inner_url));
    any.set_field_by_name("value", Value::Bytes(resolved.encode_to_vec().into()));
    Ok(true)
}

/// The message a `TypedStruct` describes, and its type URL.
fn unwrap(wrapper: &DynamicMessage, path: &str) -> Result<(String, DynamicMessage), String> {
    let url = wrapper
        .get_field_by_name("type_url")
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    if url.is_empty() {
        return Err(format!("{path}.type_url: required in a TypedStruct"));
    }
    let name = proto::type_name(&url);
    let desc =
        proto::descriptor(name).ok_or_else(|| format!("{path}.type_url: unknown type {name}"))?;
    let json = match wrapper.get_field_by_name("value") {
        Some(v) => match v.as_message() {
            Some(s) => proto::dynamic_to_json(s),
            None => serde_json::Value::Object(Default::default()),
        },
        None => serde_json::Value::Object(Default::default()),
    };
    let json = if json.is_null() {
        serde_json::Value::Object(Default::default())
    } else {
        json
    };
    let msg = proto::from_json(desc, json).map_err(|e| format!("{path}.value: {e}"))?;
    Ok((url, msg))
}

fn join(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_owned()
    } else {
        format!("{path}.{field}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bootstrap(json: serde_json::Value) -> Result<DynamicMessage, String> {
        let desc = proto::descriptor("envoy.config.bootstrap.v3.Bootstrap").unwrap();
        let mut msg = proto::from_json(desc, json)?;
        resolve(&mut msg, "")?;
        Ok(msg)
    }

    fn first_extension(msg: &DynamicMessage) -> serde_json::Value {
        proto::dynamic_to_json(msg)["bootstrap_extensions"][0]["typed_config"].clone()
    }

    #[test]
    fn both_wrappers_become_the_message_they_name() {
        for wrapper in WRAPPERS {
            let msg = bootstrap(serde_json::json!({
                "bootstrap_extensions": [{
                    "name": "envoy.bootstrap.internal_listener",
                    "typed_config": {
                        "@type": format!("type.googleapis.com/{wrapper}"),
                        "type_url": "type.googleapis.com/envoy.extensions.bootstrap.internal_listener.v3.InternalListener",
                        "value": { "buffer_size_kb": 64 }
                    }
                }]
            }))
            .unwrap();
            assert_eq!(
                first_extension(&msg),
                serde_json::json!({
                    "@type": "type.googleapis.com/envoy.extensions.bootstrap.internal_listener.v3.InternalListener",
                    "buffer_size_kb": 64
                })
            );
        }
    }

    #[test]
    fn unknown_fields_inside_a_wrapper_are_named() {
        let err = bootstrap(serde_json::json!({
            "bootstrap_extensions": [{
                "name": "x",
                "typed_config": {
                    "@type": "type.googleapis.com/udpa.type.v1.TypedStruct",
                    "type_url": "type.googleapis.com/envoy.extensions.bootstrap.internal_listener.v3.InternalListener",
                    "value": { "buffer_size_kb": 64, "no_such_field": 1 }
                }
            }]
        }))
        .unwrap_err();
        assert!(
            err.starts_with("bootstrap_extensions[0].typed_config.value: ")
                && err.contains("no_such_field"),
            "{err}"
        );
        let err = bootstrap(serde_json::json!({
            "bootstrap_extensions": [{
                "name": "x",
                "typed_config": {
                    "@type": "type.googleapis.com/udpa.type.v1.TypedStruct",
                    "type_url": "type.googleapis.com/no.such.Type"
                }
            }]
        }))
        .unwrap_err();
        assert_eq!(
            err,
            "bootstrap_extensions[0].typed_config.type_url: unknown type no.such.Type"
        );
    }

    #[test]
    fn wrappers_nested_in_plain_any_payloads_are_resolved() {
        // A listener whose HCM (a plain Any) carries a wrapped router config.
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
                        "http_filters": [{
                            "name": "envoy.filters.http.router",
                            "typed_config": {
                                "@type": "type.googleapis.com/xds.type.v3.TypedStruct",
                                "type_url": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router",
                                "value": { "suppress_envoy_headers": true }
                            }
                        }]
                    }
                }]}]
            }),
        )
        .unwrap();
        assert!(resolve(&mut l, "").unwrap());
        let json = proto::dynamic_to_json(&l);
        assert_eq!(
            json["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"][0]["typed_config"],
            serde_json::json!({
                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router",
                "suppress_envoy_headers": true
            })
        );
        // Nothing left to resolve the second time.
        assert!(!resolve(&mut l, "").unwrap());
    }
}
