//! `x-forwarded-client-cert` (XFCC) as Envoy's connection manager writes it, from
//! `forward_client_cert_details` and `set_current_client_cert_details`: on a
//! connection with a verified client certificate (mTLS), an element
//! `By=<our URI SAN>;Hash=<sha256 of the peer certificate>;Cert="…";Chain="…";
//! Subject="…";URI=…;DNS=…` is appended (`APPEND_FORWARD`, Istio's inbound setting) or
//! replaces the header (`SANITIZE_SET`); without mTLS the header is removed unless
//! `ALWAYS_FORWARD_ONLY`.
use http::{HeaderMap, HeaderValue};

use crate::tls::PeerInfo;

pub const X_FORWARDED_CLIENT_CERT: &str = "x-forwarded-client-cert";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ForwardMode {
    /// Envoy's default: never forwarded.
    #[default]
    Sanitize,
    ForwardOnly,
    AppendForward,
    SanitizeSet,
    AlwaysForwardOnly,
}

/// `set_current_client_cert_details`: what the element carries beyond `By` and `Hash`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Details {
    pub subject: bool,
    pub cert: bool,
    pub chain: bool,
    pub dns: bool,
    pub uri: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ClientCertConfig {
    pub mode: ForwardMode,
    pub details: Details,
}

impl ClientCertConfig {
    /// Rewrites the request's XFCC header for a connection with `tls` (if TLS).
    pub fn apply(&self, h: &mut HeaderMap, tls: Option<&PeerInfo>) {
        if self.mode == ForwardMode::AlwaysForwardOnly {
            return;
        }
        let Some(peer) = tls.filter(|t| t.certificate.is_some()) else {
            h.remove(X_FORWARDED_CLIENT_CERT);
            return;
        };
        match self.mode {
            ForwardMode::ForwardOnly | ForwardMode::AlwaysForwardOnly => {}
            ForwardMode::Sanitize => {
                h.remove(X_FORWARDED_CLIENT_CERT);
            }
            ForwardMode::AppendForward | ForwardMode::SanitizeSet => {
                let element = self.element(peer);
                let value = match (self.mode, h.get(X_FORWARDED_CLIENT_CERT)) {
                    (ForwardMode::AppendForward, Some(v)) => {
                        format!("{},{element}", String::from_utf8_lossy(v.as_bytes()))
                    }
                    _ => element,
                };
                match HeaderValue::from_str(&value) {
                    Ok(v) => {
                        h.insert(X_FORWARDED_CLIENT_CERT, v);
                    }
                    Err(_) => {
                        h.remove(X_FORWARDED_CLIENT_CERT);
                    }
                }
            }
        }
    }

    fn element(&self, peer: &PeerInfo) -> String {
        use crate::tls::certs;
        let mut parts = Vec::new();
        if let Some(by) = peer.local_uri_san() {
            parts.push(format!("By={by}"));
        }
        let der = peer.certificate.as_deref().unwrap_or_default();
        parts.push(format!("Hash={}", certs::sha256_hex(der)));
        if self.details.cert {
            parts.push(format!("Cert=\"{}\"", url_encode(&certs::pem(der))));
        }
        if self.details.chain {
            let chain: String = peer.chain.iter().map(|c| certs::pem(c)).collect();
            parts.push(format!("Chain=\"{}\"", url_encode(&chain)));
        }
        let sans = certs::sans(der);
        if self.details.subject {
            parts.push(format!("Subject=\"{}\"", certs::subject(der)));
        }
        if self.details.uri {
            let uris: Vec<_> = sans
                .iter()
                .filter_map(|s| match s {
                    certs::San::Uri(u) => Some(u.as_str()),
                    _ => None,
                })
                .collect();
            if uris.is_empty() {
                // The key stays even without a URI SAN, as Envoy writes it.
                parts.push("URI=".into());
            }
            parts.extend(uris.iter().map(|u| format!("URI={u}")));
        }
        if self.details.dns {
            parts.extend(sans.iter().filter_map(|s| match s {
                certs::San::Dns(d) => Some(format!("DNS={d}")),
                _ => None,
            }));
        }
        parts.join(";")
    }
}

/// Percent-encodes what a URL query value may not carry, as Envoy's `Cert`/`Chain`.
fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3 / 2);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_mtls_the_header_goes_unless_always_forwarded() {
        let mut h = HeaderMap::new();
        h.insert(X_FORWARDED_CLIENT_CERT, HeaderValue::from_static("By=x"));
        let append = ClientCertConfig {
            mode: ForwardMode::AppendForward,
            details: Details::default(),
        };
        append.apply(&mut h, None);
        assert!(h.get(X_FORWARDED_CLIENT_CERT).is_none());
        h.insert(X_FORWARDED_CLIENT_CERT, HeaderValue::from_static("By=x"));
        let always = ClientCertConfig {
            mode: ForwardMode::AlwaysForwardOnly,
            details: Details::default(),
        };
        always.apply(&mut h, None);
        assert_eq!(h[X_FORWARDED_CLIENT_CERT], "By=x");
    }
}
