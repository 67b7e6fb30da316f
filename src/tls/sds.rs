//! An SDS subscription: one state-of-the-world `StreamSecrets` stream per secret to its
//! static cluster (as Envoy opens one per secret for a gRPC config source; Istio's
//! agent serves `default` and `ROOTCA` this way over a Unix socket). Each response is
//! checked, compiled and parsed before it replaces the secret, then ACKed; a bad one is
//! NACKed and the previous value stays. The stream is re-opened with backoff while the
//! secret is in use, and ends when no context holds it any more.
use std::{sync::Weak, time::Duration};

use envoy_types::pb::{
    envoy::{
        config::core::v3::Node,
        extensions::transport_sockets::tls::v3::Secret,
        service::{
            discovery::v3::{DiscoveryRequest, DiscoveryResponse},
            secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient,
        },
    },
    google::rpc::Status,
};
use prost::Name;
use tokio_stream::wrappers::UnboundedReceiverStream;

use super::secrets::{Resolved, SdsSource, Slot};

const BACKOFF_BASE: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Keeps `slot` current until it is dropped (`gone`).
pub async fn subscribe(
    slot: Weak<Slot>,
    source: SdsSource,
    node: Node,
    gone: tokio::sync::oneshot::Receiver<()>,
) {
    let run = async {
        let mut failures = 0u32;
        loop {
            let (got, why) = stream(&slot, &source, &node).await;
            if slot.strong_count() == 0 {
                return;
            }
            if got {
                failures = 0;
            }
            failures = failures.saturating_add(1);
            let wait = BACKOFF_BASE
                .saturating_mul(1 << failures.min(10))
                .min(BACKOFF_MAX)
                .mul_f64(fastrand::f64())
                .max(Duration::from_millis(50));
            if let Some(s) = slot.upgrade() {
                tracing::warn!(
                    "SDS stream for secret '{}' ended ({why}); retrying in {wait:?}",
                    s.secret.name
                );
                s.stats.update_failure.inc();
            }
            tokio::time::sleep(wait).await;
        }
    };
    tokio::select! {
        () = run => {}
        _ = gone => {}
    }
}

/// A secret from a file (`path_config_source`): read now and whenever the file
/// changes (checked every second; replace it with a rename), until the slot is dropped.
pub async fn watch_file(
    slot: Weak<Slot>,
    path: std::path::PathBuf,
    gone: tokio::sync::oneshot::Receiver<()>,
) {
    let run = async {
        let mut seen = None;
        loop {
            let stamp = crate::xds::file::stamp(&path);
            if stamp.is_some() && stamp != seen {
                seen = stamp;
                let Some(s) = slot.upgrade() else { return };
                let outcome = crate::xds::file::read_response(&path).and_then(|r| apply(&s, &r));
                match outcome {
                    Ok(()) => s.stats.update_success.inc(),
                    Err(e) => {
                        tracing::warn!(
                            "{}: secret '{}' rejected: {e}",
                            path.display(),
                            s.secret.name
                        );
                        s.stats.update_rejected.inc();
                    }
                }
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    };
    tokio::select! {
        () = run => {}
        _ = gone => {}
    }
}

/// One stream; true when a response arrived, and why it ended.
async fn stream(slot: &Weak<Slot>, source: &SdsSource, node: &Node) -> (bool, String) {
    let Some(name) = slot.upgrade().map(|s| s.secret.name.clone()) else {
        return (false, "unused".into());
    };
    let channel = match crate::xds::ads::connect(&source.target, source.connect_timeout).await {
        Ok(c) => c,
        Err(e) => return (false, e),
    };
    let mut client = SecretDiscoveryServiceClient::new(channel);
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let type_url = Secret::type_url();
    let _ = tx.send(DiscoveryRequest {
        node: Some(node.clone()),
        resource_names: vec![name.clone()],
        type_url: type_url.clone(),
        ..Default::default()
    });
    let mut inbound = match client
        .stream_secrets(UnboundedReceiverStream::new(rx))
        .await
    {
        Ok(r) => r.into_inner(),
        Err(e) => return (false, e.to_string()),
    };
    let mut got = false;
    let mut version = String::new();
    loop {
        let resp = match inbound.message().await {
            Ok(Some(r)) => r,
            Ok(None) => return (got, "closed by the server".into()),
            Err(e) => return (got, e.to_string()),
        };
        got = true;
        let Some(slot) = slot.upgrade() else {
            return (got, "unused".into());
        };
        let error_detail = match apply(&slot, &resp) {
            Ok(()) => {
                version = resp.version_info.clone();
                slot.stats.update_success.inc();
                None
            }
            Err(e) => {
                tracing::warn!("SDS: rejected secret '{name}': {e}");
                slot.stats.update_rejected.inc();
                Some(Status {
                    code: 3,
                    message: e,
                    details: vec![],
                })
            }
        };
        let _ = tx.send(DiscoveryRequest {
            version_info: version.clone(),
            resource_names: vec![name.clone()],
            type_url: type_url.clone(),
            response_nonce: resp.nonce.clone(),
            error_detail,
            ..Default::default()
        });
    }
}

/// One secret from an ADS response (SDS over ADS), into the slot that waits for it; a
/// secret nothing uses is ignored.
pub fn apply_ads(
    store: &super::secrets::SecretStore,
    any: envoy_types::pb::google::protobuf::Any,
    version: &str,
) -> Result<(), String> {
    let any = crate::xds::resource::unwrap(any)?;
    let secret: Secret = crate::config::proto::unpack(&any)?;
    let Some(slot) = store.ads_slot(&secret.name) else {
        return Ok(());
    };
    let outcome = take(&slot, &any, secret, version);
    match &outcome {
        Ok(()) => slot.stats.update_success.inc(),
        Err(_) => slot.stats.update_rejected.inc(),
    }
    outcome
}

/// Takes the secret named by the slot out of a response.
fn apply(slot: &Slot, resp: &DiscoveryResponse) -> Result<(), String> {
    for any in &resp.resources {
        let any = crate::xds::resource::unwrap(any.clone())?;
        let secret: Secret = crate::config::proto::unpack(&any)?;
        if secret.name == slot.secret.name {
            return take(slot, &any, secret, &resp.version_info);
        }
    }
    // As Envoy's: a response without the secret is rejected (and the value kept).
    Err(format!("Missing SDS resources for {}", slot.secret.name))
}

/// Checks, compiles and parses one `Secret` (decoded from `any`), then makes it the
/// slot's value.
fn take(
    slot: &Slot,
    any: &envoy_types::pb::google::protobuf::Any,
    secret: Secret,
    version: &str,
) -> Result<(), String> {
    let name = secret.name.clone();
    let secret =
        crate::xds::resource::check(any, secret).map_err(|e| format!("Secret '{name}': {e}"))?;
    let value = crate::config::tls::secret(&secret, &format!("Secret '{name}'"))?;
    slot.update(Resolved::new(value)?, version, secret);
    Ok(())
}
