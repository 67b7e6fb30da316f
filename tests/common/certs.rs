//! A small PKI minted per test (rcgen): a CA, leaf certificates with SPIFFE URI SANs
//! as Istio's CA issues them, an expired leaf, and files for `filename` data sources.
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

pub struct Ca {
    params: CertificateParams,
    key: KeyPair,
    pub pem: String,
}

/// A certificate and its key, PEM.
#[derive(Clone)]
pub struct Leaf {
    pub cert: String,
    pub key: String,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::OrganizationName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let pem = params.self_signed(&key).unwrap().pem();
        Ca { params, key, pem }
    }

    /// A workload certificate for `spiffe_id` (client and server auth, as Istio's).
    pub fn leaf(&self, spiffe_id: &str) -> Leaf {
        self.leaf_with(spiffe_id, false)
    }

    /// A certificate whose validity ended yesterday.
    pub fn expired_leaf(&self, spiffe_id: &str) -> Leaf {
        self.leaf_with(spiffe_id, true)
    }

    fn leaf_with(&self, spiffe_id: &str, expired: bool) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.subject_alt_names = vec![SanType::URI(spiffe_id.try_into().unwrap())];
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        if expired {
            p.not_before = rcgen::date_time_ymd(2020, 1, 1);
            p.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = p.signed_by(&key, &issuer).unwrap();
        Leaf {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }
}

impl Leaf {
    /// Writes `<name>.crt` and `<name>.key` under `dir`; returns their paths.
    pub fn write(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let c = dir.join(format!("{name}.crt"));
        let k = dir.join(format!("{name}.key"));
        std::fs::write(&c, &self.cert).unwrap();
        std::fs::write(&k, &self.key).unwrap();
        (c, k)
    }
}

/// Istio's mutual TLS as a file-based transport socket, in one line of YAML flow
/// (`transport_socket: {…}`) that fits at any indentation: a server's
/// (`DownstreamTlsContext`, client certificate required) or, with the SAN the server
/// must present, a client's (`UpstreamTlsContext`).
pub fn mtls_socket(
    (cert, key): &(PathBuf, PathBuf),
    ca: &Path,
    alpn: &[&str],
    server_san: Option<&str>,
) -> String {
    let files = format!(
        "tls_certificates: [{{ certificate_chain: {{ filename: {:?} }}, private_key: {{ filename: {:?} }} }}]",
        cert.display().to_string(),
        key.display().to_string()
    );
    let alpn = alpn.join(", ");
    let (ty, require, san) = match server_san {
        None => (
            "DownstreamTlsContext",
            "require_client_certificate: true, ",
            String::new(),
        ),
        Some(s) => (
            "UpstreamTlsContext",
            "",
            format!(", match_subject_alt_names: [{{ exact: {s:?} }}]"),
        ),
    };
    format!(
        "transport_socket: {{ name: envoy.transport_sockets.tls, typed_config: {{ \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.{ty}, {require}common_tls_context: {{ alpn_protocols: [{alpn}], {files}, validation_context: {{ trusted_ca: {{ filename: {:?} }}{san} }} }} }} }}",
        ca.display().to_string()
    )
}

/// Writes a CA bundle; returns its path.
pub fn write_ca(dir: &Path, name: &str, pem: &str) -> PathBuf {
    let p = dir.join(format!("{name}.pem"));
    std::fs::write(&p, pem).unwrap();
    p
}

pub const SECRET: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

/// An SDS `tls_certificate` secret.
pub fn certificate_secret(name: &str, leaf: &Leaf) -> envoy_types::pb::google::protobuf::Any {
    super::xds::any(&super::xds::from_yaml::<
        envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret,
    >(&format!(
        "name: {name}\ntls_certificate:\n  certificate_chain: {{ inline_string: {:?} }}\n  private_key: {{ inline_string: {:?} }}\n",
        leaf.cert, leaf.key
    )))
}

/// Istio's `ROOTCA` secret: the CA as a validation context.
pub fn root_secret(ca: &Ca) -> envoy_types::pb::google::protobuf::Any {
    super::xds::any(&super::xds::from_yaml::<
        envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret,
    >(&format!(
        "name: ROOTCA\nvalidation_context:\n  trusted_ca: {{ inline_string: {:?} }}\n",
        ca.pem
    )))
}

/// What Istio's agent serves over SDS: the workload's certificate as `default` and the
/// mesh's root as `ROOTCA`.
pub fn istio_secrets(
    ca: &Ca,
    leaf: &Leaf,
) -> Vec<(String, envoy_types::pb::google::protobuf::Any)> {
    vec![
        ("default".into(), certificate_secret("default", leaf)),
        ("ROOTCA".into(), root_secret(ca)),
    ]
}

/// A mesh workload's sidecar as a TLS server: its certificate for `spiffe_id`, client
/// certificates verified against `ca` and required (STRICT-like).
pub fn server_config(ca: &Ca, spiffe_id: &str) -> std::sync::Arc<rustls::ServerConfig> {
    use std::sync::Arc;
    let leaf = ca.leaf(spiffe_id);
    let provider = Arc::new(pilotfish::tls::provider());
    let roots = pilotfish::tls::certs::roots(ca.pem.as_bytes()).unwrap();
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
            .build()
            .unwrap();
    let (chain, key) = leaf.der();
    Arc::new(
        rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .unwrap(),
    )
}

/// A sidecar's client side: `leaf` presented, the server's certificate checked
/// against `ca` and its SPIFFE ID, the given ALPN offered.
pub fn client_config(
    ca: &Ca,
    leaf: &Leaf,
    server_id: &str,
    alpn: &[&str],
) -> std::sync::Arc<rustls::ClientConfig> {
    use std::sync::Arc;
    let provider = pilotfish::tls::provider();
    let verifier = Arc::new(pilotfish::tls::verify::PeerVerifier {
        trust: Some(pilotfish::tls::verify::Trust::Static(
            pilotfish::tls::certs::Roots::One(
                pilotfish::tls::certs::roots(ca.pem.as_bytes()).unwrap(),
            ),
        )),
        san: vec![pilotfish::config::tls::SanMatcher::exact_uri(server_id)],
        algs: provider.signature_verification_algorithms,
        mandatory: true,
    });
    let (chain, key) = leaf.der();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(chain, key)
        .unwrap();
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Arc::new(config)
}

impl Leaf {
    /// The chain and key as DER, for rustls.
    pub fn der(
        &self,
    ) -> (
        Vec<rustls::pki_types::CertificateDer<'static>>,
        rustls::pki_types::PrivateKeyDer<'static>,
    ) {
        use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
        (
            CertificateDer::pem_slice_iter(self.cert.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .unwrap(),
            PrivateKeyDer::from_pem_slice(self.key.as_bytes()).unwrap(),
        )
    }
}
