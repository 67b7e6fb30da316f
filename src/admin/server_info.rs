//! `/server_info` in Envoy's `envoy.admin.v3.ServerInfo` JSON shape: version, state,
//! uptime, the command line options and the node.
use std::time::Instant;

use super::State;

/// What `/server_info` reports that the process knows at startup.
#[derive(Debug, Clone)]
pub struct ServerInfo {
    /// Envoy's version format: `<sha>/<version>/Clean/RELEASE/<ssl library>`.
    pub version: String,
    pub started: Instant,
    /// `command_line_options` with Envoy's field names.
    pub command_line: serde_json::Value,
    /// The node as sent to the control plane.
    pub node: serde_json::Value,
}

impl Default for ServerInfo {
    fn default() -> Self {
        ServerInfo {
            version: version(),
            started: Instant::now(),
            command_line: serde_json::json!({}),
            node: serde_json::json!({}),
        }
    }
}

/// The build's version in Envoy's format (`--version`, `/server_info`).
pub fn version() -> String {
    format!(
        "{}/{}/Clean/RELEASE/rustls",
        env!("PILOTFISH_GIT_SHA"),
        env!("CARGO_PKG_VERSION")
    )
}

pub fn render(state: &State) -> String {
    let s = &state.server;
    let up = format!("{}s", s.started.elapsed().as_secs());
    let json = serde_json::json!({
        "version": s.version,
        "state": state.readiness.state().as_str(),
        "uptime_current_epoch": up,
        "uptime_all_epochs": up,
        "hot_restart_version": "disabled",
        "command_line_options": s.command_line,
        "node": s.node,
    });
    serde_json::to_string_pretty(&json).unwrap_or_default()
}
