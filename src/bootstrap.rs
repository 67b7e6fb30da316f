//! Envoy-compatible bootstrap loading: `-c FILE` (YAML, JSON or binary proto), an
//! optional `--config-yaml` merged over it with protobuf merge semantics (as Envoy does),
//! or the embedded sidecar default when neither is given.
use std::path::Path;

use envoy_types::pb::envoy::config::bootstrap::v3::Bootstrap;
use prost::Message;
use prost_reflect::DynamicMessage;

use crate::config::{Config, compile, proto, support, typed_struct};

/// The embedded default: an Istio-style sidecar with no control plane. Outbound capture
/// on 15001 and inbound capture on 15006 pass TCP to the original destination.
pub const DEFAULT_BOOTSTRAP: &str = include_str!("default_bootstrap.yaml");

const BOOTSTRAP_TYPE: &str = "envoy.config.bootstrap.v3.Bootstrap";

/// A decoded, checked and compiled bootstrap.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub proto: Bootstrap,
    pub config: Config,
    /// True when neither `-c` nor `--config-yaml` was given.
    pub is_default: bool,
    /// Fields the bootstrap sets that are no fields of Envoy's API, dropped under
    /// `--allow-unknown-static-fields` (Envoy warns about each and counts them).
    pub unknown_fields: Vec<String>,
}

impl Loaded {
    /// `--stats-tag name:value`: fixed tags on every stat, after the bootstrap's.
    pub fn add_fixed_tags(&mut self, tags: &[(String, String)]) -> Result<(), String> {
        use crate::{config::server::NamingConfig, telemetry::tags::TagRule};
        let old = &self.config.server.naming;
        let mut rules = old.tags.clone();
        rules.extend(tags.iter().map(|(name, value)| TagRule::Fixed {
            name: name.clone(),
            value: value.clone(),
        }));
        self.config.server.naming = std::sync::Arc::new(NamingConfig {
            use_all_default_tags: old.use_all_default_tags,
            tags: rules,
            matcher: old.matcher.clone(),
            buckets: old.buckets.clone(),
        });
        Ok(())
    }
}

/// What the command line changes about loading.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// `--allow-unknown-static-fields`.
    pub allow_unknown_fields: bool,
    /// `--service-node`, `--service-cluster`, `--service-zone`: they override the
    /// bootstrap's node, as in Envoy.
    pub node_id: Option<String>,
    pub node_cluster: Option<String>,
    pub node_zone: Option<String>,
}

/// Runs `f` (bootstrap decoding and checks: the work that needs the descriptor pool) on
/// a short-lived thread, and drops the pool there before it exits. The result is copied
/// onto the caller's heap: the pool's tens of MB then live and die in the decode
/// thread's arena, not interleaved with what outlives them, so the trim after startup
/// ([`crate::memory::release_free_memory`]) can give them back.
#[allow(
    clippy::expect_used,
    reason = "at startup only: a process that cannot start a thread cannot serve"
)]
pub fn on_decode_thread<T: Clone + Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        let decode = std::thread::Builder::new()
            .name("pilotfish-config".into())
            .spawn_scoped(s, || {
                let out = f();
                crate::config::proto::release_pool();
                out
            })
            .expect("spawn the config thread");
        decode
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            .clone()
    })
}

/// Loads the bootstrap the way Envoy's `-c` and `--config-yaml` do.
#[allow(
    clippy::expect_used,
    reason = "the embedded default bootstrap is checked by a test"
)]
pub fn load(
    path: Option<&Path>,
    overlay_yaml: Option<&str>,
    opts: &LoadOptions,
) -> Result<Loaded, String> {
    let is_default = path.is_none() && overlay_yaml.is_none();
    let mut unknown = Vec::new();
    let allow = opts.allow_unknown_fields;
    let mut msg = match path {
        Some(p) => {
            let bytes = std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()))?;
            decode_file(p, &bytes, allow, &mut unknown)
                .map_err(|e| format!("{}: {e}", p.display()))?
        }
        None if overlay_yaml.is_some() => DynamicMessage::new(bootstrap_desc()),
        None => parse_text(DEFAULT_BOOTSTRAP, false, false, &mut unknown)
            .expect("the embedded default bootstrap is valid"),
    };
    if let Some(yaml) = overlay_yaml {
        let overlay = parse_text(yaml, false, allow, &mut unknown)
            .map_err(|e| format!("--config-yaml: {e}"))?;
        msg.merge(overlay.encode_to_vec().as_slice())
            .map_err(|e| e.to_string())?;
    }
    override_node(&mut msg, opts);
    from_message(&msg).map(|(proto, config)| Loaded {
        proto,
        config,
        is_default,
        unknown_fields: unknown,
    })
}

/// `--service-node`, `--service-cluster`, `--service-zone` over the bootstrap's node.
fn override_node(msg: &mut DynamicMessage, opts: &LoadOptions) {
    use prost_reflect::Value;
    if opts.node_id.is_none() && opts.node_cluster.is_none() && opts.node_zone.is_none() {
        return;
    }
    let Some(Value::Message(node)) = msg.get_field_by_name_mut("node").map(|v| v.clone()) else {
        return;
    };
    let mut node = node;
    if let Some(id) = &opts.node_id {
        node.set_field_by_name("id", Value::String(id.clone()));
    }
    if let Some(c) = &opts.node_cluster {
        node.set_field_by_name("cluster", Value::String(c.clone()));
    }
    if let Some(z) = &opts.node_zone
        && let Some(Value::Message(mut loc)) =
            node.get_field_by_name("locality").map(|v| v.into_owned())
    {
        loc.set_field_by_name("zone", Value::String(z.clone()));
        node.set_field_by_name("locality", Value::Message(loc));
    }
    msg.set_field_by_name("node", Value::Message(node));
}

/// Checks and compiles a decoded bootstrap.
pub fn from_message(msg: &DynamicMessage) -> Result<(Bootstrap, Config), String> {
    let mut msg = msg.clone();
    typed_struct::resolve(&mut msg, "")?;
    support::check(&msg, "")?;
    let proto: Bootstrap = proto::to_typed(&msg)?;
    let config = compile::compile(&proto)?;
    Ok((proto, config))
}

#[allow(
    clippy::expect_used,
    reason = "the descriptor pool is built into the binary"
)]
fn bootstrap_desc() -> prost_reflect::MessageDescriptor {
    proto::descriptor(BOOTSTRAP_TYPE).expect("Bootstrap is in the descriptor pool")
}

fn decode_file(
    path: &Path,
    bytes: &[u8],
    allow_unknown: bool,
    unknown: &mut Vec<String>,
) -> Result<DynamicMessage, String> {
    match path.extension().and_then(|e| e.to_str()) {
        Some("pb") => DynamicMessage::decode(bootstrap_desc(), bytes).map_err(|e| e.to_string()),
        Some("json") => {
            let text = std::str::from_utf8(bytes).map_err(|e| e.to_string())?;
            parse_text(text, true, allow_unknown, unknown)
        }
        _ => {
            let text = std::str::from_utf8(bytes).map_err(|e| e.to_string())?;
            parse_text(text, false, allow_unknown, unknown)
        }
    }
}

/// Parses proto3 JSON (or its YAML spelling) as a Bootstrap. With `allow_unknown`,
/// keys that are no fields of Envoy's API are dropped and their paths added to
/// `unknown`; otherwise they are an error naming them.
pub fn parse_text(
    text: &str,
    json: bool,
    allow_unknown: bool,
    unknown: &mut Vec<String>,
) -> Result<DynamicMessage, String> {
    let value: serde_json::Value = if json {
        serde_json::from_str(text).map_err(|e| format!("invalid JSON: {e}"))?
    } else {
        let v: serde_yaml::Value =
            serde_yaml::from_str(text).map_err(|e| format!("invalid YAML: {e}"))?;
        serde_json::to_value(v).map_err(|e| format!("invalid YAML: {e}"))?
    };
    let mut value = if value.is_null() {
        serde_json::json!({})
    } else {
        value
    };
    if allow_unknown {
        unknown.extend(proto::strip_unknown(&bootstrap_desc(), &mut value, ""));
    }
    proto::from_json(bootstrap_desc(), value)
}
