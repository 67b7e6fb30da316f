//! `GET /certs` in Envoy's `envoy.admin.v3.Certificates` shape: per SDS secret in use,
//! its certificate chain or CA certificates with serial number, SANs, validity and
//! days until expiration (what `istioctl proxy-config secret` and operators check for
//! rotation). Envoy lists the same certificates once per TLS context that uses them;
//! pilotfish lists each secret once.
use serde_json::{Value, json};

use crate::tls::{
    SecretStore,
    certs::{self, San},
    secrets::Resolved,
};

pub fn render(secrets: &SecretStore) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let mut out = Vec::new();
    for slot in secrets.current() {
        let Some(value) = slot.get() else { continue };
        let (key, ders): (&str, Vec<Vec<u8>>) = match &*value {
            Resolved::Certificate { key, .. } => (
                "cert_chain",
                key.cert.iter().map(|c| c.as_ref().to_vec()).collect(),
            ),
            Resolved::Validation { pem: Some(ca), .. } => (
                "ca_cert",
                ca.pems()
                    .into_iter()
                    .flat_map(|pem| certs::chain(pem).unwrap_or_default())
                    .map(|c| c.as_ref().to_vec())
                    .collect(),
            ),
            Resolved::Validation { pem: None, .. } => continue,
        };
        let details: Vec<Value> = ders.iter().filter_map(|d| details(d, now)).collect();
        out.push(json!({ key: details }));
    }
    serde_json::to_string_pretty(&json!({ "certificates": out })).unwrap_or_default() + "\n"
}

fn details(der: &[u8], now: i64) -> Option<Value> {
    let info = certs::info(der)?;
    let sans: Vec<Value> = info
        .subject_alt_names
        .iter()
        .map(|s| match s {
            San::Uri(u) => json!({ "uri": u }),
            San::Dns(d) => json!({ "dns": d }),
            San::Email(e) => json!({ "dns": e }),
            San::Ip(ip) => json!({ "ip_address": ip.to_string() }),
        })
        .collect();
    Some(json!({
        "path": "<inline>",
        "serial_number": info.serial_number,
        "subject_alt_names": sans,
        "days_until_expiration": ((info.expiration_time - now) / 86400).max(0).to_string(),
        "valid_from": rfc3339(info.valid_from),
        "expiration_time": rfc3339(info.expiration_time),
    }))
}

/// Unix seconds as protobuf JSON's timestamp text (whole seconds: no fraction).
fn rfc3339(secs: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs.max(0) as u64);
    crate::telemetry::access_log::rfc3339_millis(t).replace(".000Z", "Z")
}

#[cfg(test)]
mod tests {
    #[test]
    fn timestamps_are_rfc3339() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::rfc3339(1_795_000_000), "2026-11-18T11:06:40Z");
        assert_eq!(super::rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }
}
