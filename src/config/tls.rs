//! Compiles `envoy.transport_sockets.tls` (`UpstreamTlsContext`, `DownstreamTlsContext`)
//! and SDS `Secret`s into [`TlsContext`] / [`SecretValue`]. Everything rustls cannot do
//! is rejected with its field path; nothing is silently weakened. What is accepted but
//! narrowed (a cipher suite or curve rustls lacks in a list that has others, a minimum
//! version below TLS 1.2) only ever makes the set of accepted handshakes smaller.
use std::{sync::Arc, time::Duration};

use envoy_types::pb::envoy::{
    config::core::v3::{ConfigSource, DataSource, config_source, data_source},
    extensions::transport_sockets::tls::v3::{
        CertificateValidationContext, CommonTlsContext, DownstreamTlsContext, SdsSecretConfig,
        Secret, SubjectAltNameMatcher, TlsCertificate, TlsParameters, UpstreamTlsContext,
        common_tls_context::ValidationContextType, secret,
        subject_alt_name_matcher::SanType as SanTypePb, tls_parameters::TlsProtocol,
    },
};

use super::{compile::duration, proto, route_config::string_matcher};
use crate::http::matchers::StringMatcher;

type Result<T> = std::result::Result<T, String>;

pub const TLS: &str = "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext";
pub const DOWNSTREAM_TLS: &str = "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext";
pub const RAW_BUFFER: &str = "envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer";

/// A TLS context, client or server side, as compiled.
#[derive(Debug, Clone, PartialEq)]
pub struct TlsContext {
    /// The certificates to present (the first is used; Envoy picks among several by
    /// key type, which pilotfish does not: more than one is rejected).
    pub certificate: Option<CertificateSource>,
    pub validation: Validation,
    pub alpn: Vec<String>,
    pub params: TlsParams,
    /// Upstream `sni`.
    pub sni: Option<String>,
    /// Downstream `require_client_certificate`.
    pub require_client_certificate: bool,
    /// Upstream `max_session_keys` (Envoy's default 1; 0 disables resumption).
    pub max_session_keys: usize,
}

/// Where an SDS secret is served.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SecretSource {
    /// A gRPC `SecretDiscoveryService` on this static cluster (Istio's `sds-grpc`).
    Grpc(String),
    /// `path_config_source`: a file holding a `DiscoveryResponse` with the secret,
    /// re-read when it changes.
    File(std::path::PathBuf),
    /// `ads`: the secret comes over the ADS stream.
    Ads,
}

/// Where a certificate and its key come from.
#[derive(Debug, Clone, PartialEq)]
pub enum CertificateSource {
    Static(Arc<CertificatePem>),
    Sds(SdsSecret),
}

/// A certificate chain and its private key, PEM (checked when compiled).
#[derive(Debug, Clone, PartialEq)]
pub struct CertificatePem {
    pub chain: Vec<u8>,
    pub key: Vec<u8>,
}

/// An SDS secret: its name and where it comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SdsSecret {
    pub name: String,
    pub source: SecretSource,
    /// `initial_fetch_timeout` (Envoy's 15 s default; `None` for `0s`: wait forever).
    pub initial_fetch_timeout: Option<Duration>,
}

/// How peer certificates are checked.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Validation {
    /// The trusted CAs; none: peer certificates are not verified (as Envoy without a
    /// validation context).
    pub trust: Option<TrustSource>,
    /// The SAN matchers of the static (default) context; a peer certificate must match
    /// one (none: any).
    pub san: Vec<SanMatcher>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum TrustSource {
    Static(CaBundle),
    Sds(SdsSecret),
}

/// Trusted CAs (PEM): one bundle (`trusted_ca`), or one per SPIFFE trust domain (the
/// `envoy.tls.cert_validator.spiffe` validator: a peer is checked against the bundle of
/// its SPIFFE ID's trust domain only).
#[derive(Debug, Clone, PartialEq)]
pub enum CaBundle {
    Pem(Arc<Vec<u8>>),
    Spiffe(Arc<Vec<(String, Vec<u8>)>>),
}

impl CaBundle {
    /// Every CA certificate, PEM.
    pub fn pems(&self) -> Vec<&[u8]> {
        match self {
            CaBundle::Pem(p) => vec![p.as_slice()],
            CaBundle::Spiffe(d) => d.iter().map(|(_, p)| p.as_slice()).collect(),
        }
    }
}

/// A compiled `SubjectAltNameMatcher` (or a legacy `match_subject_alt_names` entry,
/// which Envoy applies to the DNS, URI, email and IP SANs alike).
#[derive(Debug, Clone)]
pub struct SanMatcher {
    pub san_type: SanType,
    pub matcher: StringMatcher,
    /// The config it came from, for equality.
    source: String,
}

impl SanMatcher {
    /// Matches a URI SAN exactly (a SPIFFE ID).
    pub fn exact_uri(id: &str) -> Self {
        SanMatcher {
            san_type: SanType::Uri,
            matcher: StringMatcher {
                kind: crate::http::matchers::StringMatch::Exact(id.to_owned()),
                ignore_case: false,
            },
            source: format!("uri:{id}"),
        }
    }

    #[cfg(test)]
    pub fn for_tests(san_type: SanType, matcher: StringMatcher) -> Self {
        SanMatcher {
            san_type,
            source: format!("{san_type:?}:{matcher:?}"),
            matcher,
        }
    }
}

impl PartialEq for SanMatcher {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SanType {
    /// Legacy `match_subject_alt_names`: DNS, URI, email and IP SANs.
    Any,
    Dns,
    Uri,
    Email,
    Ip,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    V1_2,
    V1_3,
}

/// `tls_params`, narrowed to what rustls implements.
#[derive(Debug, Clone, PartialEq)]
pub struct TlsParams {
    pub min: TlsVersion,
    pub max: TlsVersion,
    /// TLS 1.2 cipher suites by their IANA names (rustls' names), in preference order;
    /// `None`: the default set. TLS 1.3 suites are not configurable (as in Envoy).
    pub tls12_suites: Option<Vec<&'static str>>,
    /// Key-exchange groups by rustls' names; `None`: the default set.
    pub curves: Option<Vec<&'static str>>,
}

/// An SDS secret's value.
#[derive(Debug, Clone, PartialEq)]
pub enum SecretValue {
    Certificate(Arc<CertificatePem>),
    Validation {
        /// The trusted CAs (`trusted_ca` or the SPIFFE validator's bundles).
        trusted_ca: Option<CaBundle>,
        san: Vec<SanMatcher>,
    },
}

/// A transport socket on a cluster or filter chain: `None` for `raw_buffer`.
pub fn transport_socket(
    ts: &envoy_types::pb::envoy::config::core::v3::TransportSocket,
    path: &str,
    downstream: bool,
) -> Result<Option<TlsContext>> {
    use envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType;
    let Some(ConfigType::TypedConfig(any)) = &ts.config_type else {
        return Err(format!("{path} ({}): typed_config is required", ts.name));
    };
    let tpath = format!("{path}.typed_config");
    match (proto::type_name(&any.type_url), downstream) {
        (RAW_BUFFER, _) => Ok(None),
        (TLS, false) => {
            let c: UpstreamTlsContext = proto::unpack(any).map_err(|e| format!("{tpath}: {e}"))?;
            upstream(&c, &tpath).map(Some)
        }
        (DOWNSTREAM_TLS, true) => {
            let c: DownstreamTlsContext =
                proto::unpack(any).map_err(|e| format!("{tpath}: {e}"))?;
            downstream_ctx(&c, &tpath).map(Some)
        }
        (other, _) => Err(format!("{path} ({}): {other} not supported here", ts.name)),
    }
}

fn upstream(c: &UpstreamTlsContext, path: &str) -> Result<TlsContext> {
    let mut ctx = common(
        c.common_tls_context.as_ref(),
        &format!("{path}.common_tls_context"),
    )?;
    ctx.sni = (!c.sni.is_empty()).then(|| c.sni.clone());
    ctx.max_session_keys = c.max_session_keys.map_or(1, |v| v.value as usize);
    Ok(ctx)
}

fn downstream_ctx(c: &DownstreamTlsContext, path: &str) -> Result<TlsContext> {
    let mut ctx = common(
        c.common_tls_context.as_ref(),
        &format!("{path}.common_tls_context"),
    )?;
    if ctx.certificate.is_none() {
        return Err(format!(
            "{path}.common_tls_context: a server needs a certificate (tls_certificates or \
             tls_certificate_sds_secret_configs)"
        ));
    }
    ctx.require_client_certificate = c.require_client_certificate.is_some_and(|v| v.value);
    if ctx.require_client_certificate && ctx.validation.trust.is_none() {
        return Err(format!(
            "{path}.require_client_certificate: a validation context with trusted CAs is \
             required to verify client certificates"
        ));
    }
    Ok(ctx)
}

fn common(c: Option<&CommonTlsContext>, path: &str) -> Result<TlsContext> {
    let default = CommonTlsContext::default();
    let c = c.unwrap_or(&default);
    let n = c.tls_certificates.len() + c.tls_certificate_sds_secret_configs.len();
    if n > 1 {
        return Err(format!(
            "{path}: at most one certificate (tls_certificates / \
             tls_certificate_sds_secret_configs) is supported"
        ));
    }
    let certificate = if let Some(cert) = c.tls_certificates.first() {
        Some(CertificateSource::Static(Arc::new(certificate(
            cert,
            &format!("{path}.tls_certificates[0]"),
        )?)))
    } else if let Some(s) = c.tls_certificate_sds_secret_configs.first() {
        Some(CertificateSource::Sds(sds(
            s,
            &format!("{path}.tls_certificate_sds_secret_configs[0]"),
        )?))
    } else {
        None
    };
    let validation = match &c.validation_context_type {
        None => Validation::default(),
        Some(ValidationContextType::ValidationContext(v)) => {
            let vpath = format!("{path}.validation_context");
            let (trusted_ca, san) = validation_context(v, &vpath)?;
            Validation {
                trust: trusted_ca.map(TrustSource::Static),
                san,
            }
        }
        Some(ValidationContextType::ValidationContextSdsSecretConfig(s)) => Validation {
            trust: Some(TrustSource::Sds(sds(
                s,
                &format!("{path}.validation_context_sds_secret_config"),
            )?)),
            san: Vec::new(),
        },
        Some(ValidationContextType::CombinedValidationContext(cv)) => {
            let cpath = format!("{path}.combined_validation_context");
            // Its trusted CAs, if any, are replaced by the SDS secret's (Envoy's MergeFrom).
            let (_, san) = match &cv.default_validation_context {
                Some(v) => validation_context(v, &format!("{cpath}.default_validation_context"))?,
                None => (None, Vec::new()),
            };
            // The SDS context is merged over the default one (as Envoy's MergeFrom):
            // its trusted CAs win.
            let trust = match &cv.validation_context_sds_secret_config {
                Some(s) => Some(TrustSource::Sds(sds(
                    s,
                    &format!("{cpath}.validation_context_sds_secret_config"),
                )?)),
                None => {
                    return Err(format!(
                        "{cpath}.validation_context_sds_secret_config: required"
                    ));
                }
            };
            Validation { trust, san }
        }
        Some(_) => {
            return Err(format!(
                "{path}: certificate provider validation contexts are not supported"
            ));
        }
    };
    if !validation.san.is_empty() && validation.trust.is_none() {
        return Err(format!(
            "{path}: subject alt name matchers need trusted CAs (trusted_ca) to verify \
             against"
        ));
    }
    for (i, p) in c.alpn_protocols.iter().enumerate() {
        if p.is_empty() || p.len() > 255 {
            return Err(format!(
                "{path}.alpn_protocols[{i}]: must be 1 to 255 bytes"
            ));
        }
    }
    Ok(TlsContext {
        certificate,
        validation,
        alpn: c.alpn_protocols.clone(),
        params: params(c.tls_params.as_ref(), &format!("{path}.tls_params"))?,
        sni: None,
        require_client_certificate: false,
        max_session_keys: 1,
    })
}

fn certificate(c: &TlsCertificate, path: &str) -> Result<CertificatePem> {
    let chain = data(
        c.certificate_chain.as_ref(),
        &format!("{path}.certificate_chain"),
    )?;
    let key = data(c.private_key.as_ref(), &format!("{path}.private_key"))?;
    let pem = CertificatePem { chain, key };
    crate::tls::certs::certified_key(&pem).map_err(|e| format!("{path}: {e}"))?;
    Ok(pem)
}

/// The trusted CAs, when given.
type TrustedCa = Option<CaBundle>;

/// A `CertificateValidationContext`: its trusted CAs and SAN matchers.
fn validation_context(
    v: &CertificateValidationContext,
    path: &str,
) -> Result<(TrustedCa, Vec<SanMatcher>)> {
    let trusted_ca = match (&v.custom_validator_config, &v.trusted_ca) {
        (Some(cv), _) => Some(spiffe_validator(
            cv,
            &format!("{path}.custom_validator_config"),
        )?),
        (None, Some(ds)) => {
            let pem = data(Some(ds), &format!("{path}.trusted_ca"))?;
            crate::tls::certs::roots(&pem).map_err(|e| format!("{path}.trusted_ca: {e}"))?;
            Some(CaBundle::Pem(Arc::new(pem)))
        }
        (None, None) => None,
    };
    let mut san = Vec::new();
    #[allow(deprecated)]
    for (i, m) in v.match_subject_alt_names.iter().enumerate() {
        let mpath = format!("{path}.match_subject_alt_names[{i}]");
        san.push(SanMatcher {
            san_type: SanType::Any,
            matcher: string_matcher(m, &mpath)?,
            source: format!("any:{m:?}"),
        });
    }
    for (i, m) in v.match_typed_subject_alt_names.iter().enumerate() {
        san.push(typed_san(
            m,
            &format!("{path}.match_typed_subject_alt_names[{i}]"),
        )?);
    }
    Ok((trusted_ca, san))
}

/// `envoy.tls.cert_validator.spiffe`: a bundle per trust domain (as Istio's agent
/// sends `ROOTCA` for a mesh with several trust domains). Envoy ignores `trusted_ca`
/// next to it; so does pilotfish.
fn spiffe_validator(
    cv: &envoy_types::pb::envoy::config::core::v3::TypedExtensionConfig,
    path: &str,
) -> Result<CaBundle> {
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::SpiffeCertValidatorConfig;
    let Some(any) = &cv.typed_config else {
        return Err(format!("{path}.typed_config: required"));
    };
    let c: SpiffeCertValidatorConfig =
        proto::unpack(any).map_err(|e| format!("{path}.typed_config: {e}"))?;
    let tpath = format!("{path}.typed_config");
    if c.trust_domains.is_empty() {
        return Err(format!("{tpath}.trust_domains: at least one is required"));
    }
    let mut domains = Vec::new();
    for (i, td) in c.trust_domains.iter().enumerate() {
        let dpath = format!("{tpath}.trust_domains[{i}]");
        if td.name.is_empty() {
            return Err(format!("{dpath}.name: required"));
        }
        let pem = data(td.trust_bundle.as_ref(), &format!("{dpath}.trust_bundle"))?;
        crate::tls::certs::roots(&pem).map_err(|e| format!("{dpath}.trust_bundle: {e}"))?;
        domains.push((td.name.clone(), pem));
    }
    Ok(CaBundle::Spiffe(Arc::new(domains)))
}

fn typed_san(m: &SubjectAltNameMatcher, path: &str) -> Result<SanMatcher> {
    let san_type = match SanTypePb::try_from(m.san_type) {
        Ok(SanTypePb::Dns) => SanType::Dns,
        Ok(SanTypePb::Uri) => SanType::Uri,
        Ok(SanTypePb::Email) => SanType::Email,
        Ok(SanTypePb::IpAddress) => SanType::Ip,
        Ok(SanTypePb::OtherName) => {
            return Err(format!("{path}.san_type: OTHER_NAME not supported"));
        }
        _ => return Err(format!("{path}.san_type: required")),
    };
    let Some(matcher) = &m.matcher else {
        return Err(format!("{path}.matcher: required"));
    };
    Ok(SanMatcher {
        san_type,
        matcher: string_matcher(matcher, &format!("{path}.matcher"))?,
        source: format!("{m:?}"),
    })
}

fn sds(s: &SdsSecretConfig, path: &str) -> Result<SdsSecret> {
    if s.name.is_empty() {
        return Err(format!("{path}.name: required"));
    }
    let Some(cs) = &s.sds_config else {
        return Err(format!(
            "{path}.sds_config: required (secrets without a source are not supported)"
        ));
    };
    let source = sds_source(cs, &format!("{path}.sds_config"))?;
    let initial_fetch_timeout = match &cs.initial_fetch_timeout {
        Some(d) if d.seconds == 0 && d.nanos == 0 => None,
        Some(d) => Some(duration(d)),
        None => Some(Duration::from_secs(15)),
    };
    Ok(SdsSecret {
        name: s.name.clone(),
        source,
        initial_fetch_timeout,
    })
}

/// Where an SDS `ConfigSource` points: a static cluster's gRPC service (as Istio's
/// agent serves it) or a file.
fn sds_source(cs: &ConfigSource, path: &str) -> Result<SecretSource> {
    use envoy_types::pb::envoy::config::core::v3::{api_config_source::ApiType, grpc_service};
    match &cs.config_source_specifier {
        Some(config_source::ConfigSourceSpecifier::ApiConfigSource(api)) => {
            let apath = format!("{path}.api_config_source");
            if api.api_type != ApiType::Grpc as i32 {
                return Err(format!("{apath}.api_type: only GRPC is supported for SDS"));
            }
            let [svc] = api.grpc_services.as_slice() else {
                return Err(format!("{apath}.grpc_services: exactly one is required"));
            };
            match &svc.target_specifier {
                Some(grpc_service::TargetSpecifier::EnvoyGrpc(g)) if !g.cluster_name.is_empty() => {
                    Ok(SecretSource::Grpc(g.cluster_name.clone()))
                }
                _ => Err(format!(
                    "{apath}.grpc_services[0].envoy_grpc.cluster_name: required"
                )),
            }
        }
        Some(config_source::ConfigSourceSpecifier::PathConfigSource(p)) if !p.path.is_empty() => {
            Ok(SecretSource::File(p.path.clone().into()))
        }
        Some(config_source::ConfigSourceSpecifier::Ads(_)) => Ok(SecretSource::Ads),
        _ => Err(format!(
            "{path}: SDS is supported from a gRPC api_config_source (Istio's sds-grpc), \
             ads or a path_config_source"
        )),
    }
}

fn params(p: Option<&TlsParameters>, path: &str) -> Result<TlsParams> {
    let default = TlsParameters::default();
    let p = p.unwrap_or(&default);
    let version = |v: i32, field: &str, auto: TlsVersion| -> Result<Option<TlsVersion>> {
        match TlsProtocol::try_from(v) {
            Ok(TlsProtocol::TlsAuto) => Ok(Some(auto)),
            Ok(TlsProtocol::TlSv12) => Ok(Some(TlsVersion::V1_2)),
            Ok(TlsProtocol::TlSv13) => Ok(Some(TlsVersion::V1_3)),
            // rustls implements TLS 1.2 and 1.3 only.
            Ok(TlsProtocol::TlSv10 | TlsProtocol::TlSv11) => Ok(None),
            Err(_) => Err(format!("{path}.{field}: unknown value {v}")),
        }
    };
    // A minimum below TLS 1.2 becomes 1.2 (stricter, never weaker); a maximum below it
    // cannot be served.
    let min = version(
        p.tls_minimum_protocol_version,
        "tls_minimum_protocol_version",
        TlsVersion::V1_2,
    )?
    .unwrap_or(TlsVersion::V1_2);
    // Envoy's default maximum is TLS 1.3 on both sides.
    let max = version(
        p.tls_maximum_protocol_version,
        "tls_maximum_protocol_version",
        TlsVersion::V1_3,
    )?
    .ok_or_else(|| {
        format!(
            "{path}.tls_maximum_protocol_version: TLS 1.0 and 1.1 are not supported (rustls \
             implements TLS 1.2 and 1.3)"
        )
    })?;
    if min > max {
        return Err(format!(
            "{path}: tls_minimum_protocol_version is above tls_maximum_protocol_version"
        ));
    }
    let tls12_suites = if p.cipher_suites.is_empty() {
        None
    } else {
        let mut out = Vec::new();
        for (i, entry) in p.cipher_suites.iter().enumerate() {
            // BoringSSL's equal-preference groups, `[A|B]`, as Envoy's defaults write them.
            let inner = entry.trim_start_matches('[').trim_end_matches(']');
            for name in inner.split('|') {
                match cipher_suite(name) {
                    Some(Some(s)) => {
                        if !out.contains(&s) {
                            out.push(s)
                        }
                    }
                    Some(None) => {}
                    None => {
                        return Err(format!(
                            "{path}.cipher_suites[{i}]: unknown cipher suite '{name}'"
                        ));
                    }
                }
            }
        }
        if out.is_empty() && max == TlsVersion::V1_2 {
            return Err(format!(
                "{path}.cipher_suites: none of these is implemented by rustls (it \
                 offers only ECDHE suites with AES-GCM or ChaCha20-Poly1305)"
            ));
        }
        Some(out)
    };
    let curves = if p.ecdh_curves.is_empty() {
        None
    } else {
        let mut out = Vec::new();
        for (i, name) in p.ecdh_curves.iter().enumerate() {
            match curve(name) {
                Some(Some(c)) => out.push(c),
                Some(None) => {}
                None => return Err(format!("{path}.ecdh_curves[{i}]: unknown curve '{name}'")),
            }
        }
        if out.is_empty() {
            return Err(format!(
                "{path}.ecdh_curves: none of these is implemented (X25519, P-256 and P-384 \
                 are)"
            ));
        }
        Some(out)
    };
    if !p.signature_algorithms.is_empty() {
        return Err(format!("{path}.signature_algorithms: not supported"));
    }
    Ok(TlsParams {
        min,
        max,
        tls12_suites,
        curves,
    })
}

/// An OpenSSL/BoringSSL cipher-suite name: `Some(Some(rustls name))` when rustls
/// implements it, `Some(None)` for a suite BoringSSL knows and rustls does not (RSA key
/// exchange, CBC, PSK: accepted and not offered), `None` when unknown.
fn cipher_suite(name: &str) -> Option<Option<&'static str>> {
    Some(match name {
        "ECDHE-ECDSA-AES128-GCM-SHA256" => Some("TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"),
        "ECDHE-ECDSA-AES256-GCM-SHA384" => Some("TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384"),
        "ECDHE-RSA-AES128-GCM-SHA256" => Some("TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"),
        "ECDHE-RSA-AES256-GCM-SHA384" => Some("TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384"),
        "ECDHE-ECDSA-CHACHA20-POLY1305" => Some("TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256"),
        "ECDHE-RSA-CHACHA20-POLY1305" => Some("TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256"),
        "ECDHE-ECDSA-AES128-SHA"
        | "ECDHE-RSA-AES128-SHA"
        | "ECDHE-ECDSA-AES256-SHA"
        | "ECDHE-RSA-AES256-SHA"
        | "AES128-GCM-SHA256"
        | "AES256-GCM-SHA384"
        | "AES128-SHA"
        | "AES256-SHA"
        | "DES-CBC3-SHA"
        | "ECDHE-PSK-AES128-CBC-SHA"
        | "ECDHE-PSK-AES256-CBC-SHA"
        | "ECDHE-PSK-CHACHA20-POLY1305"
        | "PSK-AES128-CBC-SHA"
        | "PSK-AES256-CBC-SHA" => None,
        _ => return None,
    })
}

/// An Envoy curve name: `Some(Some(rustls name))` when implemented, `Some(None)` when
/// known and not implemented with ring, `None` when unknown.
fn curve(name: &str) -> Option<Option<&'static str>> {
    Some(match name {
        "X25519" => Some("X25519"),
        "P-256" => Some("secp256r1"),
        "P-384" => Some("secp384r1"),
        "P-521" | "X25519MLKEM768" | "X25519Kyber768Draft00" => None,
        _ => return None,
    })
}

/// A `DataSource`'s bytes: inline, or read from a file now (`filename`).
pub(super) fn data(ds: Option<&DataSource>, path: &str) -> Result<Vec<u8>> {
    match ds.and_then(|d| d.specifier.as_ref()) {
        Some(data_source::Specifier::InlineBytes(b)) => Ok(b.clone()),
        Some(data_source::Specifier::InlineString(s)) => Ok(s.as_bytes().to_vec()),
        Some(data_source::Specifier::Filename(f)) => {
            std::fs::read(f).map_err(|e| format!("{path}.filename: {f}: {e}"))
        }
        Some(data_source::Specifier::EnvironmentVariable(_)) => {
            Err(format!("{path}.environment_variable: not supported"))
        }
        None => Err(format!("{path}: required")),
    }
}

/// An SDS `Secret` resource (checked against the allow-list before).
pub fn secret(s: &Secret, path: &str) -> Result<SecretValue> {
    match &s.r#type {
        Some(secret::Type::TlsCertificate(c)) => Ok(SecretValue::Certificate(Arc::new(
            certificate(c, &format!("{path}.tls_certificate"))?,
        ))),
        Some(secret::Type::ValidationContext(v)) => {
            let (trusted_ca, san) = validation_context(v, &format!("{path}.validation_context"))?;
            Ok(SecretValue::Validation { trusted_ca, san })
        }
        Some(_) => Err(format!(
            "{path}: only tls_certificate and validation_context secrets are supported"
        )),
        None => Err(format!("{path}: a secret type is required")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tls_params(yaml: &str) -> Result<TlsParams> {
        let p: TlsParameters = crate::config::proto::from_yaml_for_tests(yaml);
        params(Some(&p), "tls_params")
    }

    #[test]
    fn istio_inbound_ciphers_keep_the_ecdhe_ones() {
        let p = tls_params(
            "tls_minimum_protocol_version: TLSv1_2\ntls_maximum_protocol_version: TLSv1_3\n\
             cipher_suites: [ECDHE-ECDSA-AES256-GCM-SHA384, ECDHE-RSA-AES256-GCM-SHA384, \
             ECDHE-ECDSA-AES128-GCM-SHA256, ECDHE-RSA-AES128-GCM-SHA256, AES256-GCM-SHA384, \
             AES128-GCM-SHA256]",
        )
        .unwrap();
        assert_eq!(p.min, TlsVersion::V1_2);
        assert_eq!(p.max, TlsVersion::V1_3);
        assert_eq!(p.tls12_suites.unwrap().len(), 4);
    }

    #[test]
    fn envoy_default_group_syntax_and_unknown_names() {
        let p = tls_params(
            "cipher_suites: ['[ECDHE-ECDSA-AES128-GCM-SHA256|ECDHE-ECDSA-CHACHA20-POLY1305]']",
        )
        .unwrap();
        assert_eq!(p.tls12_suites.unwrap().len(), 2);
        let e = tls_params("cipher_suites: [NOT-A-SUITE]").unwrap_err();
        assert!(
            e.contains("tls_params.cipher_suites[0]: unknown cipher suite"),
            "{e}"
        );
        let e =
            tls_params("tls_maximum_protocol_version: TLSv1_2\ncipher_suites: [AES128-GCM-SHA256]")
                .unwrap_err();
        assert!(e.contains("none of these"), "{e}");
    }

    #[test]
    fn versions_below_tls12() {
        let p = tls_params("tls_minimum_protocol_version: TLSv1_0").unwrap();
        assert_eq!(p.min, TlsVersion::V1_2);
        let e = tls_params("tls_maximum_protocol_version: TLSv1_1").unwrap_err();
        assert!(e.contains("tls_maximum_protocol_version"), "{e}");
        let e = tls_params("ecdh_curves: [P-521]").unwrap_err();
        assert!(e.contains("ecdh_curves"), "{e}");
        let e = tls_params("ecdh_curves: [P-999]").unwrap_err();
        assert!(e.contains("ecdh_curves[0]: unknown curve"), "{e}");
    }
}
