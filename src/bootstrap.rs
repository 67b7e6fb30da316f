//! Envoy-compatible bootstrap loading: `-c FILE` (YAML, JSON or binary proto), an
//! optional `--config-yaml` merged over it with protobuf merge semantics (as Envoy does),
//! or the embedded sidecar default when neither is given.
use std::path::Path;

use envoy_types::pb::envoy::config::bootstrap::v3::Bootstrap;
use prost::Message;
use prost_reflect::DynamicMessage;

use crate::config::{Config, compile, proto, support};

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
}

/// Runs `f` (bootstrap decoding and checks: the work that needs the descriptor pool) on
/// a short-lived thread, and drops the pool there before it exits. The result is copied
/// onto the caller's heap: the pool's tens of MB then live and die in the decode
/// thread's arena, not interleaved with what outlives them, so the trim after startup
/// ([`crate::memory::release_free_memory`]) can give them back.
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
pub fn load(path: Option<&Path>, overlay_yaml: Option<&str>) -> Result<Loaded, String> {
    let is_default = path.is_none() && overlay_yaml.is_none();
    let mut msg = match path {
        Some(p) => {
            let bytes = std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()))?;
            decode_file(p, &bytes).map_err(|e| format!("{}: {e}", p.display()))?
        }
        None if overlay_yaml.is_some() => DynamicMessage::new(bootstrap_desc()),
        None => {
            parse_text(DEFAULT_BOOTSTRAP, false).expect("the embedded default bootstrap is valid")
        }
    };
    if let Some(yaml) = overlay_yaml {
        let overlay = parse_text(yaml, false).map_err(|e| format!("--config-yaml: {e}"))?;
        msg.merge(overlay.encode_to_vec().as_slice())
            .map_err(|e| e.to_string())?;
    }
    from_message(&msg).map(|(proto, config)| Loaded {
        proto,
        config,
        is_default,
    })
}

/// Checks and compiles a decoded bootstrap.
pub fn from_message(msg: &DynamicMessage) -> Result<(Bootstrap, Config), String> {
    support::check(msg, "")?;
    let proto: Bootstrap = proto::to_typed(msg)?;
    let config = compile::compile(&proto)?;
    Ok((proto, config))
}

fn bootstrap_desc() -> prost_reflect::MessageDescriptor {
    proto::descriptor(BOOTSTRAP_TYPE).expect("Bootstrap is in the descriptor pool")
}

fn decode_file(path: &Path, bytes: &[u8]) -> Result<DynamicMessage, String> {
    match path.extension().and_then(|e| e.to_str()) {
        Some("pb") => DynamicMessage::decode(bootstrap_desc(), bytes).map_err(|e| e.to_string()),
        Some("json") => {
            let text = std::str::from_utf8(bytes).map_err(|e| e.to_string())?;
            parse_text(text, true)
        }
        _ => {
            let text = std::str::from_utf8(bytes).map_err(|e| e.to_string())?;
            parse_text(text, false)
        }
    }
}

/// Parses proto3 JSON (or its YAML spelling) as a Bootstrap.
pub fn parse_text(text: &str, json: bool) -> Result<DynamicMessage, String> {
    let value: serde_json::Value = if json {
        serde_json::from_str(text).map_err(|e| format!("invalid JSON: {e}"))?
    } else {
        let v: serde_yaml::Value =
            serde_yaml::from_str(text).map_err(|e| format!("invalid YAML: {e}"))?;
        serde_json::to_value(v).map_err(|e| format!("invalid YAML: {e}"))?
    };
    let value = if value.is_null() {
        serde_json::json!({})
    } else {
        value
    };
    proto::from_json(bootstrap_desc(), value)
}
