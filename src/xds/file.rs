//! `path_config_source`: LDS or CDS from a file holding a `DiscoveryResponse` (YAML,
//! JSON or binary `.pb`), for users without a control plane. The file is read at start
//! and again whenever it changes (checked every second; replace it atomically with a
//! rename, as with Envoy). A file that does not parse or has an invalid resource is
//! rejected as a NACK would be: logged, counted, and the running config kept.
use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse;
use prost::Message;
use prost_reflect::DynamicMessage;

use super::{Kind, state::Handle, state::Update};
use crate::config::proto;

const POLL: Duration = Duration::from_secs(1);

/// Reads `path` now and again whenever it changes, applying its resources as `kind`.
pub async fn watch(path: PathBuf, kind: Kind, state: Arc<Handle>) {
    let mut seen: Option<(SystemTime, u64, u64)> = None;
    loop {
        let stamp = stamp(&path);
        if stamp.is_some() && stamp != seen {
            seen = stamp;
            load(&path, kind, &state);
        } else if stamp.is_none() && seen.is_none() {
            tracing::warn!("{}: cannot read; waiting for it", path.display());
            seen = Some((SystemTime::UNIX_EPOCH, 0, 0));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Reads and applies the file once.
pub fn load(path: &Path, kind: Kind, state: &Handle) {
    let received = Instant::now();
    let result = read(path, kind).and_then(|resp| {
        state.apply(
            kind,
            Update::Full {
                version: resp.version_info,
                resources: resp.resources,
            },
            received,
        )
    });
    match result {
        Ok(()) => tracing::info!("{}: {} applied", path.display(), kind.short()),
        Err(e) => tracing::warn!("{}: rejected: {e}", path.display()),
    }
}

fn read(path: &Path, kind: Kind) -> Result<DiscoveryResponse, String> {
    let resp = read_response(path)?;
    if let Some(bad) = resp
        .resources
        .iter()
        .find(|r| proto::type_name(&r.type_url) != kind.type_name())
    {
        return Err(format!(
            "resources: a {} in a {} file",
            proto::type_name(&bad.type_url),
            kind.short()
        ));
    }
    Ok(resp)
}

/// A `DiscoveryResponse` from a file: binary for `.pb`, JSON for `.json`, else YAML.
#[allow(
    clippy::expect_used,
    reason = "the descriptor pool is built into the binary"
)]
pub fn read_response(path: &Path) -> Result<DiscoveryResponse, String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    let desc = proto::descriptor("envoy.service.discovery.v3.DiscoveryResponse")
        .expect("DiscoveryResponse is in the pool");
    let msg = match path.extension().and_then(|e| e.to_str()) {
        Some("pb") => DynamicMessage::decode(desc, bytes.as_slice()).map_err(|e| e.to_string())?,
        ext => {
            let text = std::str::from_utf8(&bytes).map_err(|e| e.to_string())?;
            let value: serde_json::Value = if ext == Some("json") {
                serde_json::from_str(text).map_err(|e| format!("invalid JSON: {e}"))?
            } else {
                let v: serde_yaml::Value =
                    serde_yaml::from_str(text).map_err(|e| format!("invalid YAML: {e}"))?;
                serde_json::to_value(v).map_err(|e| format!("invalid YAML: {e}"))?
            };
            proto::from_json(desc, value)?
        }
    };
    DiscoveryResponse::decode(msg.encode_to_vec().as_slice()).map_err(|e| e.to_string())
}

/// A file's identity for change detection: modification time, size and inode (a
/// rename over it changes the inode).
pub fn stamp(path: &Path) -> Option<(SystemTime, u64, u64)> {
    std::fs::metadata(path).ok().map(|m| {
        use std::os::unix::fs::MetadataExt;
        (
            m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            m.len(),
            m.ino(),
        )
    })
}
