//! Peer certificate checks as Envoy's default validator makes them: the chain up to a
//! trusted CA (the CA bundle may come from SDS and change between handshakes), then
//! the subject alt name matchers. The host name is never checked against SNI (Envoy
//! does not either; Istio identities are SPIFFE URIs, matched by SAN). A SAN mismatch
//! fails as `NotValidForName`, so the handshake's stats tell it from a chain failure.
use std::sync::Arc;

use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, Error, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::WebPkiSupportedAlgorithms,
    pki_types::{CertificateDer, ServerName, UnixTime},
    server::danger::{ClientCertVerified, ClientCertVerifier},
};

use super::{
    certs::{Roots, San, sans},
    secrets::{Resolved, Slot},
};
use crate::config::tls::{SanMatcher, SanType};

/// Where the trusted CAs are.
#[derive(Debug)]
pub enum Trust {
    Static(Roots),
    Sds(Arc<Slot>),
}

/// Verifies peer certificates against trusted CAs and SAN matchers; `trust: None`
/// verifies nothing but the handshake signatures (Envoy without a validation context).
#[derive(Debug)]
pub struct PeerVerifier {
    pub trust: Option<Trust>,
    pub san: Vec<SanMatcher>,
    pub algs: WebPkiSupportedAlgorithms,
    /// Server side: a client certificate is required.
    pub mandatory: bool,
}

impl PeerVerifier {
    fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        usage: webpki::KeyUsage,
    ) -> Result<(), Error> {
        let Some(trust) = &self.trust else {
            return Ok(());
        };
        let (roots, extra_san) = match trust {
            Trust::Static(r) => (r.clone(), None),
            Trust::Sds(slot) => match slot.get().as_deref() {
                Some(Resolved::Validation {
                    roots: Some(r),
                    san,
                    ..
                }) => (r.clone(), Some(san.clone())),
                // Not arrived yet (or not a validation context): nothing is trusted.
                _ => return Err(Error::InvalidCertificate(CertificateError::UnknownIssuer)),
            },
        };
        let roots = roots
            .for_cert(end_entity)
            .ok_or(Error::InvalidCertificate(CertificateError::UnknownIssuer))?;
        let cert = webpki::EndEntityCert::try_from(end_entity)
            .map_err(|_| Error::InvalidCertificate(CertificateError::BadEncoding))?;
        cert.verify_for_usage(
            self.algs.all,
            &roots.roots,
            intermediates,
            now,
            usage,
            None,
            None,
        )
        .map_err(chain_error)?;
        let matchers: Vec<&SanMatcher> =
            self.san.iter().chain(extra_san.iter().flatten()).collect();
        if !matchers.is_empty() {
            let names = sans(end_entity);
            if !matchers
                .iter()
                .any(|m| names.iter().any(|n| san_matches(m, n)))
            {
                return Err(Error::InvalidCertificate(CertificateError::Other(
                    rustls::OtherError(Arc::new(SanMismatch(names))),
                )));
            }
        }
        Ok(())
    }
}

/// A peer certificate none of whose SANs the matchers accept (`ssl.fail_verify_san`).
#[derive(Debug)]
pub struct SanMismatch(pub Vec<San>);

impl std::fmt::Display for SanMismatch {
    /// As Envoy words it in the transport failure reason.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<String> = self
            .0
            .iter()
            .map(|s| match s {
                San::Dns(v) | San::Uri(v) | San::Email(v) => v.clone(),
                San::Ip(ip) => ip.to_string(),
            })
            .collect();
        write!(
            f,
            "verify cert failed: SAN matcher, certificate SANs are [{}]",
            names.join(", ")
        )
    }
}

impl std::error::Error for SanMismatch {}

/// The SAN mismatch behind a certificate error, if that is what it is (as opposed to a
/// chain that does not verify).
pub fn is_san_mismatch(e: &CertificateError) -> Option<&SanMismatch> {
    match e {
        CertificateError::Other(o) => o.0.downcast_ref::<SanMismatch>(),
        _ => None,
    }
}

fn chain_error(e: webpki::Error) -> Error {
    use webpki::Error as W;
    Error::InvalidCertificate(match e {
        W::UnknownIssuer => CertificateError::UnknownIssuer,
        W::CertExpired { .. } => CertificateError::Expired,
        W::CertNotValidYet { .. } => CertificateError::NotValidYet,
        W::InvalidSignatureForPublicKey => CertificateError::BadSignature,
        other => CertificateError::Other(rustls::OtherError(Arc::new(other))),
    })
}

/// One SAN against one matcher, as Envoy: DNS names with a leading `*.` wildcard
/// match an exact matcher's single leftmost label; IPs as their text.
fn san_matches(m: &SanMatcher, san: &San) -> bool {
    let typed = |t: SanType| m.san_type == SanType::Any || m.san_type == t;
    match san {
        San::Dns(d) if typed(SanType::Dns) => dns_matches(m, d),
        San::Uri(u) if typed(SanType::Uri) => m.matcher.matches(u),
        San::Email(e) if typed(SanType::Email) => m.matcher.matches(e),
        San::Ip(ip) if typed(SanType::Ip) => m.matcher.matches(&ip.to_string()),
        _ => false,
    }
}

fn dns_matches(m: &SanMatcher, dns: &str) -> bool {
    use crate::http::matchers::StringMatch;
    if let (StringMatch::Exact(want), Some(suffix)) = (&m.matcher.kind, dns.strip_prefix('*'))
        && suffix.starts_with('.')
    {
        // With `ignore_case` the pattern was lowered when compiled.
        let dns_suffix = if m.matcher.ignore_case {
            suffix.to_ascii_lowercase()
        } else {
            suffix.to_owned()
        };
        return want
            .strip_suffix(dns_suffix.as_str())
            .is_some_and(|label| !label.is_empty() && !label.contains('.'))
            || m.matcher.matches(dns);
    }
    m.matcher.matches(dns)
}

impl ServerCertVerifier for PeerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        self.verify(
            end_entity,
            intermediates,
            now,
            webpki::KeyUsage::server_auth(),
        )?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

impl ClientCertVerifier for PeerVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        self.verify(
            end_entity,
            intermediates,
            now,
            webpki::KeyUsage::client_auth(),
        )?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::matchers::{StringMatch, StringMatcher};

    fn exact(san_type: SanType, v: &str) -> SanMatcher {
        SanMatcher::for_tests(
            san_type,
            StringMatcher {
                kind: StringMatch::Exact(v.into()),
                ignore_case: false,
            },
        )
    }

    #[test]
    fn dns_wildcards_and_types() {
        let m = exact(SanType::Any, "a.example.com");
        assert!(san_matches(&m, &San::Dns("*.example.com".into())));
        assert!(!san_matches(&m, &San::Dns("*.com".into())));
        assert!(san_matches(&m, &San::Dns("a.example.com".into())));
        let uri = exact(SanType::Uri, "spiffe://cluster.local/ns/a/sa/b");
        assert!(san_matches(
            &uri,
            &San::Uri("spiffe://cluster.local/ns/a/sa/b".into())
        ));
        assert!(!san_matches(
            &uri,
            &San::Dns("spiffe://cluster.local/ns/a/sa/b".into())
        ));
        let ip = exact(SanType::Ip, "10.0.0.1");
        assert!(san_matches(&ip, &San::Ip("10.0.0.1".parse().unwrap())));
    }
}
