//! Certificates and keys from PEM, trust anchors, and what pilotfish reads out of a
//! certificate: its subject alt names (SAN matching, the peer's SPIFFE identity) and
//! its validity (`/certs`).
use std::sync::Arc;

use rustls::{
    RootCertStore,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    sign::CertifiedKey,
};
use x509_parser::{extensions::GeneralName, prelude::FromDer};

use crate::config::tls::CertificatePem;

/// The certificates of a PEM bundle, in order.
pub fn chain(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("invalid PEM certificate: {e:?}"))?;
    if certs.is_empty() {
        return Err("no PEM certificate found".into());
    }
    for c in &certs {
        x509_parser::certificate::X509Certificate::from_der(c)
            .map_err(|e| format!("invalid certificate: {e}"))?;
    }
    Ok(certs)
}

/// A certificate chain with its key, ready to present; fails when the key does not
/// parse or does not belong to the first certificate.
pub fn certified_key(pem: &CertificatePem) -> Result<Arc<CertifiedKey>, String> {
    let chain = chain(&pem.chain).map_err(|e| format!("certificate_chain: {e}"))?;
    let key = PrivateKeyDer::from_pem_slice(&pem.key)
        .map_err(|e| format!("private_key: no usable PEM private key ({e:?})"))?;
    CertifiedKey::from_der(chain, key, &super::provider())
        .map(Arc::new)
        .map_err(|e| format!("private_key: {e}"))
}

/// Trust anchors from PEM CA certificates.
pub fn roots(pem: &[u8]) -> Result<Arc<RootCertStore>, String> {
    let mut store = RootCertStore::empty();
    for c in chain(pem)? {
        store
            .add(c)
            .map_err(|e| format!("unusable CA certificate: {e}"))?;
    }
    Ok(Arc::new(store))
}

/// A subject alt name of a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum San {
    Dns(String),
    Uri(String),
    Email(String),
    Ip(std::net::IpAddr),
}

/// The subject alt names of a DER certificate (none when it does not parse).
pub fn sans(der: &[u8]) -> Vec<San> {
    let Ok((_, cert)) = x509_parser::certificate::X509Certificate::from_der(der) else {
        return Vec::new();
    };
    let Ok(Some(ext)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    ext.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(d) => Some(San::Dns(d.to_string())),
            GeneralName::URI(u) => Some(San::Uri(u.to_string())),
            GeneralName::RFC822Name(e) => Some(San::Email(e.to_string())),
            GeneralName::IPAddress(b) => match b.len() {
                4 => Some(San::Ip(std::net::IpAddr::from(
                    <[u8; 4]>::try_from(*b).ok()?,
                ))),
                16 => Some(San::Ip(std::net::IpAddr::from(
                    <[u8; 16]>::try_from(*b).ok()?,
                ))),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

/// The first URI SAN: a workload's SPIFFE identity (Envoy's peer "principal").
pub fn uri_san(der: &[u8]) -> Option<String> {
    sans(der).into_iter().find_map(|s| match s {
        San::Uri(u) => Some(u),
        _ => None,
    })
}

/// What `/certs` shows of a certificate.
#[derive(Debug, Clone)]
pub struct CertInfo {
    pub serial_number: String,
    pub subject_alt_names: Vec<San>,
    /// Unix seconds.
    pub valid_from: i64,
    pub expiration_time: i64,
}

pub fn info(der: &[u8]) -> Option<CertInfo> {
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der).ok()?;
    Some(CertInfo {
        serial_number: cert
            .raw_serial()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
        subject_alt_names: sans(der),
        valid_from: cert.validity().not_before.timestamp(),
        expiration_time: cert.validity().not_after.timestamp(),
    })
}
