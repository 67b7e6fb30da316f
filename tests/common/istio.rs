//! Istio's side of the tests: the golden bootstraps pilot-agent renders
//! (`../shared/istio/bootstrap/`) and the command line it starts the proxy with.
use std::path::Path;

use super::require;

pub const GOLDENS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/istio/bootstrap");

/// pilot-agent's command line (Istio 1.30, `pkg/envoy/proxy.go`), after `-c FILE`.
pub const AGENT_FLAGS: &[&str] = &[
    "--drain-time-s",
    "45",
    "--drain-strategy",
    "immediate",
    "--local-address-ip-version",
    "v4",
    "--file-flush-interval-msec",
    "1000",
    "--disable-hot-restart",
    "--allow-unknown-static-fields",
    "-l",
    "warning",
    "--component-log-level",
    "misc:error",
    "--skip-deprecated-logs",
    "--concurrency",
    "2",
];

pub fn golden(name: &str) -> String {
    std::fs::read_to_string(Path::new(GOLDENS).join(name))
        .unwrap_or_else(|e| panic!("{GOLDENS}/{name}: {e} (the shared Istio goldens)"))
}

pub fn goldens_present() -> bool {
    require(
        "Istio's golden bootstraps in ../shared/istio/bootstrap",
        Path::new(GOLDENS).is_dir(),
    )
}
