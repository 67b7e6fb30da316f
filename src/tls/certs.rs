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

/// Trust anchors as a context uses them: one store, or one per SPIFFE trust domain.
#[derive(Debug, Clone)]
pub enum Roots {
    One(Arc<RootCertStore>),
    Spiffe(Vec<(String, Arc<RootCertStore>)>),
}

impl Roots {
    pub fn new(bundle: &crate::config::tls::CaBundle) -> Result<Self, String> {
        use crate::config::tls::CaBundle;
        Ok(match bundle {
            CaBundle::Pem(p) => Roots::One(roots(p)?),
            CaBundle::Spiffe(domains) => Roots::Spiffe(
                domains
                    .iter()
                    .map(|(d, p)| Ok((d.clone(), roots(p)?)))
                    .collect::<Result<_, String>>()?,
            ),
        })
    }

    /// The anchors a certificate is checked against: with the SPIFFE validator, those
    /// of the trust domain of its one URI SAN (none when it has no SPIFFE ID, several
    /// URI SANs, or a trust domain not configured: Envoy refuses those).
    pub fn for_cert(&self, der: &[u8]) -> Option<Arc<RootCertStore>> {
        match self {
            Roots::One(r) => Some(r.clone()),
            Roots::Spiffe(domains) => {
                let uris: Vec<String> = sans(der)
                    .into_iter()
                    .filter_map(|s| match s {
                        San::Uri(u) => Some(u),
                        _ => None,
                    })
                    .collect();
                let [uri] = uris.as_slice() else { return None };
                let domain = uri.strip_prefix("spiffe://")?.split('/').next()?;
                domains
                    .iter()
                    .find(|(d, _)| d == domain)
                    .map(|(_, r)| r.clone())
            }
        }
    }
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

/// The SHA-256 of a DER certificate, lowercase hex (XFCC's `Hash`).
pub fn sha256_hex(der: &[u8]) -> String {
    data_encoding::HEXLOWER.encode(ring::digest::digest(&ring::digest::SHA256, der).as_ref())
}

/// A DER certificate as PEM.
pub fn pem(der: &[u8]) -> String {
    let b64 = data_encoding::BASE64.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// The subject of a DER certificate in RFC 2253 form (last RDN first, `+` within an
/// RDN, special characters escaped), as BoringSSL prints it for Envoy.
pub fn subject(der: &[u8]) -> String {
    let Ok((_, cert)) = x509_parser::certificate::X509Certificate::from_der(der) else {
        return String::new();
    };
    let registry = x509_parser::objects::oid_registry();
    let rdns: Vec<String> = cert
        .subject()
        .iter()
        .map(|rdn| {
            rdn.iter()
                .map(|attr| {
                    let key = x509_parser::objects::oid2abbrev(attr.attr_type(), registry)
                        .map(str::to_owned)
                        .unwrap_or_else(|_| attr.attr_type().to_id_string());
                    let value = attr.as_str().map(escape_rfc2253).unwrap_or_default();
                    format!("{key}={value}")
                })
                .collect::<Vec<_>>()
                .join("+")
        })
        .collect();
    rdns.into_iter().rev().collect::<Vec<_>>().join(",")
}

fn escape_rfc2253(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for (i, c) in v.chars().enumerate() {
        let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';')
            || (i == 0 && (c == '#' || c == ' '))
            || (i + 1 == v.chars().count() && c == ' ');
        if special {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tls::CaBundle;

    /// A CA (PEM) and a leaf it signed with the given URI SANs (DER).
    fn ca_and_leaf(uris: &[&str]) -> (String, Vec<u8>) {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
        let key = KeyPair::generate().unwrap();
        let mut leaf = CertificateParams::new(Vec::<String>::new()).unwrap();
        leaf.subject_alt_names = uris
            .iter()
            .map(|u| SanType::URI((*u).try_into().unwrap()))
            .collect();
        let der = leaf
            .signed_by(&key, &Issuer::from_params(&ca, &ca_key))
            .unwrap()
            .der()
            .to_vec();
        (ca_pem, der)
    }

    #[test]
    fn spiffe_roots_follow_the_single_spiffe_id() {
        let (ca, der) = ca_and_leaf(&["spiffe://a.local/ns/x/sa/y"]);
        let roots = Roots::new(&CaBundle::Spiffe(Arc::new(vec![
            ("b.local".into(), ca.clone().into_bytes()),
            ("a.local".into(), ca.clone().into_bytes()),
        ])))
        .unwrap();
        assert!(roots.for_cert(&der).is_some());
        let (_, two) = ca_and_leaf(&["spiffe://a.local/x", "spiffe://a.local/y"]);
        assert!(roots.for_cert(&two).is_none(), "several URI SANs");
        let (_, other) = ca_and_leaf(&["spiffe://c.local/x"]);
        assert!(roots.for_cert(&other).is_none(), "an unlisted trust domain");
        let (_, none) = ca_and_leaf(&["https://a.local/x"]);
        assert!(roots.for_cert(&none).is_none(), "not a SPIFFE ID");
        assert_eq!(uri_san(&der).as_deref(), Some("spiffe://a.local/ns/x/sa/y"));
        assert_eq!(sha256_hex(&der).len(), 64);
        assert!(pem(&der).starts_with("-----BEGIN CERTIFICATE-----\n"));
    }
}
