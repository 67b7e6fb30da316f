//! TLS contexts at run time: a compiled [`TlsContext`] bound to its secrets and turned
//! into rustls configs once, when the listener or cluster is built. Certificates and
//! CAs are looked up per handshake (a rotated secret applies to the next one), so the
//! configs never need rebuilding. Handshakes count Envoy's `ssl.*` stats in the scope of
//! the listener or cluster.
use std::{
    collections::HashMap,
    io,
    net::IpAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use rustls::{
    ClientConfig, ServerConfig, SignatureScheme, SupportedCipherSuite,
    client::{ResolvesClientCert, Resumption},
    crypto::CryptoProvider,
    pki_types::ServerName,
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::{LazyConfigAcceptor, TlsConnector};

use super::{
    secrets::{Resolved, SecretStore, Slot},
    verify::{PeerVerifier, Trust},
};
use crate::{
    config::tls::{CertificateSource, TlsContext, TlsParams, TlsVersion, TrustSource},
    telemetry::stats::{Counter, Store},
};

/// The certificate a context presents.
#[derive(Debug)]
enum Certificate {
    Static(Arc<CertifiedKey>),
    Sds(Arc<Slot>),
}

impl Certificate {
    fn get(&self) -> Option<Arc<CertifiedKey>> {
        match self {
            Certificate::Static(k) => Some(k.clone()),
            Certificate::Sds(slot) => match slot.get().as_deref() {
                Some(Resolved::Certificate { key, .. }) => Some(key.clone()),
                _ => None,
            },
        }
    }
}

impl ResolvesServerCert for Certificate {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.get()
    }
}

impl ResolvesClientCert for Certificate {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.get()
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// What a context needs before it can handshake: its SDS secrets.
#[derive(Debug, Default)]
struct Secrets(Vec<Arc<Slot>>);

impl Secrets {
    /// Waits for every secret (Envoy keeps the listener or cluster warming instead);
    /// false when one did not arrive within its `initial_fetch_timeout`.
    async fn ready(&self) -> bool {
        for s in &self.0 {
            if s.get().is_none() && !s.wait().await {
                return false;
            }
        }
        true
    }
}

fn bind(
    ctx: &TlsContext,
    store: &SecretStore,
) -> Result<(Option<Certificate>, Option<Trust>, Secrets), String> {
    let mut slots = Vec::new();
    let cert = match &ctx.certificate {
        None => None,
        Some(CertificateSource::Static(pem)) => {
            Some(Certificate::Static(super::certs::certified_key(pem)?))
        }
        Some(CertificateSource::Sds(s)) => {
            let slot = store.slot(s)?;
            slots.push(slot.clone());
            Some(Certificate::Sds(slot))
        }
    };
    let trust = match &ctx.validation.trust {
        None => None,
        Some(TrustSource::Static(ca)) => Some(Trust::Static(super::certs::Roots::new(ca)?)),
        Some(TrustSource::Sds(s)) => {
            let slot = store.slot(s)?;
            slots.push(slot.clone());
            Some(Trust::Sds(slot))
        }
    };
    Ok((cert, trust, Secrets(slots)))
}

/// The crypto provider narrowed to the context's cipher suites and curves.
fn provider(p: &TlsParams) -> Arc<CryptoProvider> {
    let mut provider = super::provider();
    if let Some(wanted) = &p.tls12_suites {
        let mut suites: Vec<SupportedCipherSuite> = provider
            .cipher_suites
            .iter()
            .filter(|s| matches!(s, SupportedCipherSuite::Tls13(_)))
            .copied()
            .collect();
        for name in wanted {
            suites.extend(
                provider
                    .cipher_suites
                    .iter()
                    .filter(|s| s.suite().as_str() == Some(*name)),
            );
        }
        provider.cipher_suites = suites;
    }
    if let Some(wanted) = &p.curves {
        let all = std::mem::take(&mut provider.kx_groups);
        provider.kx_groups = wanted
            .iter()
            .filter_map(|w| all.iter().find(|g| g.name().as_str() == Some(*w)).copied())
            .collect();
    }
    Arc::new(provider)
}

fn versions(p: &TlsParams) -> Vec<&'static rustls::SupportedProtocolVersion> {
    let mut v = Vec::new();
    let tls12_usable = p.tls12_suites.as_ref().is_none_or(|s| !s.is_empty());
    if p.max >= TlsVersion::V1_3 {
        v.push(&rustls::version::TLS13);
    }
    if p.min <= TlsVersion::V1_2 && tls12_usable {
        v.push(&rustls::version::TLS12);
    }
    v
}

/// Envoy's `ssl.*` stats of one listener or cluster.
#[derive(Debug)]
pub struct TlsStats {
    scope: String,
    store: Arc<Store>,
    pub handshake: Counter,
    pub connection_error: Counter,
    pub no_certificate: Counter,
    pub fail_verify_no_cert: Counter,
    pub fail_verify_error: Counter,
    pub fail_verify_san: Counter,
    pub session_reused: Counter,
    /// `versions.*`, `ciphers.*`, `curves.*`: made on first use, as Envoy's.
    dynamic: Mutex<HashMap<String, Counter>>,
}

impl TlsStats {
    /// `scope` is `listener.<stat name>` or `cluster.<name>`.
    pub fn new(store: &Arc<Store>, scope: &str) -> Self {
        let c = |s: &str| store.counter_tagged_by_default(format!("{scope}.ssl.{s}"));
        TlsStats {
            handshake: c("handshake"),
            connection_error: c("connection_error"),
            no_certificate: c("no_certificate"),
            fail_verify_no_cert: c("fail_verify_no_cert"),
            fail_verify_error: c("fail_verify_error"),
            fail_verify_san: c("fail_verify_san"),
            session_reused: c("session_reused"),
            scope: scope.to_owned(),
            store: store.clone(),
            dynamic: Mutex::default(),
        }
    }

    fn dynamic(&self, name: &str) {
        let mut d = self.dynamic.lock().unwrap_or_else(|e| e.into_inner());
        d.entry(name.to_owned())
            .or_insert_with(|| {
                self.store
                    .counter_tagged_by_default(format!("{}.ssl.{name}", self.scope))
            })
            .inc();
    }

    /// A completed handshake.
    fn completed(&self, conn: &rustls::CommonState, server_side: bool) {
        self.handshake.inc();
        if let Some(v) = conn.protocol_version() {
            let v = match v {
                rustls::ProtocolVersion::TLSv1_3 => "TLSv1.3",
                _ => "TLSv1.2",
            };
            self.dynamic(&format!("versions.{v}"));
        }
        if let Some(s) = conn.negotiated_cipher_suite() {
            self.dynamic(&format!("ciphers.{}", cipher_name(s)));
        }
        if let Some(g) = conn.negotiated_key_exchange_group() {
            let name = match g.name().as_str() {
                Some("secp256r1") => "P-256",
                Some("secp384r1") => "P-384",
                Some(n) => n,
                None => "unknown",
            };
            self.dynamic(&format!("curves.{name}"));
        }
        if matches!(conn.handshake_kind(), Some(rustls::HandshakeKind::Resumed)) {
            self.session_reused.inc();
        }
        if server_side && conn.peer_certificates().is_none_or(|c| c.is_empty()) {
            self.no_certificate.inc();
        }
    }

    /// A failed handshake: the verification failure if this side refused the peer's
    /// certificate, else `connection_error` (as Envoy counts them: a side that fails
    /// verification does not count a connection error too).
    fn failed(&self, e: &io::Error) {
        let inner = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>());
        match inner {
            Some(rustls::Error::InvalidCertificate(c))
                if super::verify::is_san_mismatch(c).is_some() =>
            {
                self.fail_verify_san.inc()
            }
            Some(rustls::Error::InvalidCertificate(_)) => self.fail_verify_error.inc(),
            Some(rustls::Error::NoCertificatesPresented) => self.fail_verify_no_cert.inc(),
            _ => self.connection_error.inc(),
        }
    }
}

/// A failed handshake as Envoy's `%UPSTREAM_TRANSPORT_FAILURE_REASON%` words it:
/// BoringSSL's packed error code, library and reason, for the failures rustls can tell
/// apart (a refused certificate, an alert from the peer, a peer not speaking TLS).
pub fn failure_reason(e: &io::Error) -> String {
    use rustls::{AlertDescription as A, Error as E};
    let inner = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>());
    let (code, name) = match inner {
        Some(E::InvalidCertificate(c)) => {
            let detail = match super::verify::is_san_mismatch(c) {
                Some(m) => m.to_string(),
                None => format!("verify cert failed: {}", chain_failure(c)),
            };
            return format!(
                "TLS_error:|{}:SSL routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED:{detail}:TLS_error_end",
                (16u32 << 24) | 125
            );
        }
        Some(E::AlertReceived(a)) => match a {
            A::HandshakeFailure => (1040, "SSLV3_ALERT_HANDSHAKE_FAILURE"),
            A::BadCertificate => (1042, "SSLV3_ALERT_BAD_CERTIFICATE"),
            A::CertificateExpired => (1045, "SSLV3_ALERT_CERTIFICATE_EXPIRED"),
            A::UnknownCA => (1048, "TLSV1_ALERT_UNKNOWN_CA"),
            A::DecryptError => (1051, "TLSV1_ALERT_DECRYPT_ERROR"),
            A::ProtocolVersion => (1070, "TLSV1_ALERT_PROTOCOL_VERSION"),
            A::CertificateRequired => (1116, "TLSV1_ALERT_CERTIFICATE_REQUIRED"),
            A::NoApplicationProtocol => (1120, "TLSV1_ALERT_NO_APPLICATION_PROTOCOL"),
            _ => return format!("TLS error: {e}"),
        },
        Some(E::InvalidMessage(_)) => (247, "WRONG_VERSION_NUMBER"),
        _ => return format!("TLS error: {e}"),
    };
    format!(
        "TLS_error:|{}:SSL routines:OPENSSL_internal:{name}:TLS_error_end",
        (16u32 << 24) | code
    )
}

/// BoringSSL's words for a chain that does not verify, as Envoy reports them.
fn chain_failure(c: &rustls::CertificateError) -> &'static str {
    use rustls::CertificateError as C;
    match c {
        C::Expired | C::ExpiredContext { .. } => {
            "X509_verify_cert: certificate verification error at depth 0: certificate has expired"
        }
        C::NotValidYet | C::NotValidYetContext { .. } => {
            "X509_verify_cert: certificate verification error at depth 0: certificate is not yet valid"
        }
        _ => {
            "X509_verify_cert: certificate verification error at depth 0: unable to get local issuer certificate"
        }
    }
}

/// Envoy's (BoringSSL's) name of a cipher suite.
fn cipher_name(s: SupportedCipherSuite) -> &'static str {
    match s.suite().as_str().unwrap_or("unknown") {
        "TLS13_AES_128_GCM_SHA256" => "TLS_AES_128_GCM_SHA256",
        "TLS13_AES_256_GCM_SHA384" => "TLS_AES_256_GCM_SHA384",
        "TLS13_CHACHA20_POLY1305_SHA256" => "TLS_CHACHA20_POLY1305_SHA256",
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256" => "ECDHE-ECDSA-AES128-GCM-SHA256",
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384" => "ECDHE-ECDSA-AES256-GCM-SHA384",
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256" => "ECDHE-RSA-AES128-GCM-SHA256",
        "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384" => "ECDHE-RSA-AES256-GCM-SHA384",
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256" => "ECDHE-ECDSA-CHACHA20-POLY1305",
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256" => "ECDHE-RSA-CHACHA20-POLY1305",
        other => other,
    }
}

/// What the handshake established about the peer.
#[derive(Debug, Clone, Default)]
pub struct PeerInfo {
    /// The peer certificate's first URI SAN (its SPIFFE identity).
    pub uri_san: Option<String>,
    /// The peer's certificate (DER), when it presented one.
    pub certificate: Option<Arc<[u8]>>,
    /// The rest of the peer's chain (DER).
    pub chain: Vec<Arc<[u8]>>,
    /// The certificate this side presented.
    pub local: Option<Arc<CertifiedKey>>,
    pub alpn: Option<Vec<u8>>,
    /// The requested server name as Envoy's connection knows it: the TLS inspector's.
    pub sni: Option<String>,
    pub version: Option<&'static str>,
    /// `local`'s first URI SAN, parsed on first use (each request of the connection
    /// may ask: XFCC, Istio's stats).
    pub local_san: std::sync::OnceLock<Option<String>>,
}

impl PeerInfo {
    /// The first URI SAN of this side's certificate (XFCC's `By`).
    pub fn local_uri_san(&self) -> Option<String> {
        self.local_san
            .get_or_init(|| {
                let cert = self.local.as_ref()?.cert.first()?;
                super::certs::uri_san(cert)
            })
            .clone()
    }
}

fn peer_info(
    conn: &rustls::CommonState,
    sni: Option<&str>,
    local: Option<Arc<CertifiedKey>>,
) -> PeerInfo {
    let certs = conn.peer_certificates().unwrap_or_default();
    let certificate: Option<Arc<[u8]>> = certs.first().map(|c| Arc::from(c.as_ref()));
    PeerInfo {
        uri_san: certificate.as_deref().and_then(super::certs::uri_san),
        certificate,
        chain: certs
            .iter()
            .skip(1)
            .map(|c| Arc::from(c.as_ref()))
            .collect(),
        local,
        alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
        sni: sni.map(str::to_owned),
        version: conn.protocol_version().map(|v| match v {
            rustls::ProtocolVersion::TLSv1_3 => "TLSv1.3",
            _ => "TLSv1.2",
        }),
        local_san: Default::default(),
    }
}

/// A server (downstream) context: a filter chain's `DownstreamTlsContext`.
#[derive(Debug)]
pub struct ServerTls {
    /// With the context's ALPN list, for a client that offers one of its protocols.
    with_alpn: Arc<ServerConfig>,
    /// Without ALPN: a client that offers none of them still connects, with no
    /// protocol negotiated (as BoringSSL's Envoy does; rustls alone would refuse it).
    without_alpn: Arc<ServerConfig>,
    alpn: Vec<Vec<u8>>,
    /// The certificate presented (for the identity the connection carries).
    certificate: Arc<Certificate>,
    secrets: Secrets,
    pub stats: TlsStats,
}

impl ServerTls {
    pub fn new(
        ctx: &TlsContext,
        secrets: &SecretStore,
        store: &Arc<Store>,
        scope: &str,
    ) -> Result<Self, String> {
        let (cert, trust, slots) = bind(ctx, secrets)?;
        let cert = Arc::new(cert.ok_or("a server needs a certificate")?);
        let provider = provider(&ctx.params);
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&versions(&ctx.params))
            .map_err(|e| format!("tls_params: {e}"))?;
        let builder = match trust {
            Some(trust) => builder.with_client_cert_verifier(Arc::new(PeerVerifier {
                trust: Some(trust),
                san: ctx.validation.san.clone(),
                algs: provider.signature_verification_algorithms,
                mandatory: ctx.require_client_certificate,
            })),
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_cert_resolver(cert.clone());
        // Resumption as Envoy's defaults: stateless tickets and a session cache.
        config.ticketer =
            rustls::crypto::ring::Ticketer::new().map_err(|e| format!("session tickets: {e}"))?;
        config.session_storage = rustls::server::ServerSessionMemoryCache::new(4096);
        let without_alpn = Arc::new(config.clone());
        config.alpn_protocols = ctx.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        Ok(ServerTls {
            certificate: cert,
            alpn: config.alpn_protocols.clone(),
            with_alpn: Arc::new(config),
            without_alpn,
            secrets: slots,
            stats: TlsStats::new(store, scope),
        })
    }

    /// Waits for the secrets, then the handshake (within `timeout`, the chain's
    /// `transport_socket_connect_timeout`). Failures are counted and logged.
    pub async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        io: S,
        timeout: Option<Duration>,
    ) -> Option<(tokio_rustls::server::TlsStream<S>, PeerInfo)> {
        let handshake = async {
            if !self.secrets.ready().await {
                return Err(io::Error::other("secrets not available"));
            }
            let start = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), io).await?;
            let hello = start.client_hello();
            let overlap = hello
                .alpn()
                .is_some_and(|mut offered| offered.any(|p| self.alpn.iter().any(|a| a == p)));
            let sni = hello.server_name().map(str::to_owned);
            let config = if overlap || self.alpn.is_empty() {
                self.with_alpn.clone()
            } else {
                self.without_alpn.clone()
            };
            start.into_stream(config).await.map(|s| (s, sni))
        };
        let outcome = match timeout {
            Some(t) => tokio::time::timeout(t, handshake)
                .await
                .unwrap_or_else(|_| {
                    Err(io::Error::new(io::ErrorKind::TimedOut, "handshake timeout"))
                }),
            None => handshake.await,
        };
        match outcome {
            Ok((s, sni)) => {
                let conn = s.get_ref().1;
                self.stats.completed(conn, true);
                let info = peer_info(conn, sni.as_deref(), self.certificate.get());
                Some((s, info))
            }
            Err(e) => {
                self.stats.failed(&e);
                tracing::debug!("TLS handshake failed: {e}");
                None
            }
        }
    }
}

/// A client (upstream) context: a cluster's `UpstreamTlsContext`.
#[derive(Debug)]
pub struct ClientTls {
    config: Arc<ClientConfig>,
    /// The config with each `istio.alpn` override's list, by its index, made on first
    /// use (the certificate resolver and session cache are shared).
    overridden: std::sync::OnceLock<Box<[std::sync::OnceLock<Arc<ClientConfig>>]>>,
    sni: Option<ServerName<'static>>,
    secrets: Secrets,
    /// The certificate presented, for the connection's local identity.
    cert: Option<Arc<Certificate>>,
    pub stats: TlsStats,
}

impl ClientTls {
    pub fn new(
        ctx: &TlsContext,
        secrets: &SecretStore,
        store: &Arc<Store>,
        scope: &str,
    ) -> Result<Self, String> {
        let (cert, trust, slots) = bind(ctx, secrets)?;
        let provider = provider(&ctx.params);
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&versions(&ctx.params))
            .map_err(|e| format!("tls_params: {e}"))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PeerVerifier {
                trust,
                san: ctx.validation.san.clone(),
                algs: provider.signature_verification_algorithms,
                mandatory: true,
            }));
        let cert = cert.map(Arc::new);
        let mut config = match &cert {
            Some(c) => builder.with_client_cert_resolver(c.clone()),
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = ctx.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        config.resumption = if ctx.max_session_keys == 0 {
            Resumption::disabled()
        } else {
            Resumption::in_memory_sessions(ctx.max_session_keys)
        };
        let sni = match &ctx.sni {
            Some(s) => Some(
                ServerName::try_from(s.clone())
                    .map_err(|e| format!("sni: '{s}' is not a valid server name: {e}"))?,
            ),
            None => None,
        };
        config.enable_sni = sni.is_some();
        Ok(ClientTls {
            config: Arc::new(config),
            overridden: Default::default(),
            sni,
            secrets: slots,
            cert,
            stats: TlsStats::new(store, scope),
        })
    }

    /// Handshakes over `io` to `host` (the name sent is `sni`; without one, none is),
    /// offering `alpn` instead of the context's list when given.
    pub async fn connect(
        &self,
        io: tokio::net::TcpStream,
        host: IpAddr,
        alpn: Option<&crate::istio::alpn::Override>,
    ) -> io::Result<ClientStream> {
        if !self.secrets.ready().await {
            self.stats.connection_error.inc();
            return Err(io::Error::other("TLS secrets not available"));
        }
        let name = self
            .sni
            .clone()
            .unwrap_or(ServerName::IpAddress(host.into()));
        let config = match alpn {
            None => self.config.clone(),
            Some(o) => self.overridden.get_or_init(|| {
                (0..crate::istio::alpn::MAX_LISTS)
                    .map(|_| std::sync::OnceLock::new())
                    .collect()
            })[usize::from(o.id) - 1]
                .get_or_init(|| {
                    let mut c = (*self.config).clone();
                    c.alpn_protocols = o.protocols.to_vec();
                    Arc::new(c)
                })
                .clone(),
        };
        match TlsConnector::from(config).connect(name, io).await {
            Ok(s) => {
                self.stats.completed(s.get_ref().1, false);
                Ok(ClientStream {
                    inner: s,
                    connection_error: self.stats.connection_error.clone(),
                    inbox: None,
                    local: self.cert.as_ref().and_then(|c| c.get()),
                })
            }
            Err(e) => {
                self.stats.failed(&e);
                Err(e)
            }
        }
    }
}

/// An upstream TLS connection. A TLS error after the handshake (with TLS 1.3 the
/// server refuses a client certificate only after the client's handshake is done) is
/// counted in `ssl.connection_error`, as Envoy counts it.
#[derive(Debug)]
pub struct ClientStream {
    inner: tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    connection_error: Counter,
    /// Istio's metadata exchange: takes the peer's frame off the stream.
    inbox: Option<Box<crate::istio::exchange::Inbox>>,
    /// The certificate this side had to present.
    local: Option<Arc<CertifiedKey>>,
}

impl ClientStream {
    /// Istio's TCP metadata exchange, when the connection negotiated its protocol:
    /// our frame is written now and the peer's taken off what is read.
    pub async fn exchange(&mut self, x: &crate::istio::exchange::Exchange) -> io::Result<()> {
        use tokio::io::AsyncWriteExt;
        if !x.applies(self.inner.get_ref().1.alpn_protocol()) {
            return Ok(());
        }
        self.inner.write_all(x.our_frame()).await?;
        self.inner.flush().await?;
        self.inbox = Some(Box::new(x.inbox()));
        Ok(())
    }

    /// What Istio's TCP metadata exchange learns of the peer; `None` when the
    /// connection does not exchange.
    pub fn peer_slot(&self) -> Option<crate::istio::peer::PeerSlot> {
        self.inbox.as_ref().map(|i| i.peer_slot())
    }

    /// The server certificate's first URI SAN (its SPIFFE identity).
    pub fn peer_uri_san(&self) -> Option<String> {
        let cert = self.inner.get_ref().1.peer_certificates()?.first()?;
        super::certs::uri_san(cert)
    }

    /// The first URI SAN of the certificate this side presented.
    pub fn local_uri_san(&self) -> Option<String> {
        let cert = self.local.as_ref()?.cert.first()?;
        super::certs::uri_san(cert)
    }

    pub fn get_ref(&self) -> (&tokio::net::TcpStream, &rustls::ClientConnection) {
        self.inner.get_ref()
    }
}

impl AsyncRead for ClientStream {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        let this = &mut *self;
        let r = match &mut this.inbox {
            Some(i) => i.poll_read(std::pin::Pin::new(&mut this.inner), cx, buf),
            None => std::pin::Pin::new(&mut this.inner).poll_read(cx, buf),
        };
        if let std::task::Poll::Ready(Err(e)) = &r
            && e.get_ref().is_some_and(|i| i.is::<rustls::Error>())
        {
            self.connection_error.inc();
        }
        r
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> std::task::Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(
        min: TlsVersion,
        max: TlsVersion,
        suites: Option<Vec<&'static str>>,
        curves: Option<Vec<&'static str>>,
    ) -> TlsParams {
        TlsParams {
            min,
            max,
            tls12_suites: suites,
            curves,
        }
    }

    #[test]
    fn versions_follow_the_range_and_the_usable_suites() {
        use TlsVersion::*;
        let v = |p: &TlsParams| versions(p).iter().map(|v| v.version).collect::<Vec<_>>();
        assert_eq!(v(&params(V1_2, V1_3, None, None)).len(), 2);
        assert_eq!(
            v(&params(V1_2, V1_2, None, None)),
            [rustls::ProtocolVersion::TLSv1_2]
        );
        // Only suites rustls lacks were listed: TLS 1.2 is not offered at all.
        assert_eq!(
            v(&params(V1_2, V1_3, Some(vec![]), None)),
            [rustls::ProtocolVersion::TLSv1_3]
        );
    }

    #[test]
    fn the_provider_keeps_the_listed_suites_and_curves_in_order() {
        let p = provider(&params(
            TlsVersion::V1_2,
            TlsVersion::V1_3,
            Some(vec!["TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384"]),
            Some(vec!["secp256r1", "X25519"]),
        ));
        let tls12: Vec<_> = p
            .cipher_suites
            .iter()
            .filter(|s| matches!(s, SupportedCipherSuite::Tls12(_)))
            .map(|s| s.suite().as_str())
            .collect();
        assert_eq!(tls12, [Some("TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384")]);
        let groups: Vec<_> = p.kx_groups.iter().map(|g| g.name().as_str()).collect();
        assert_eq!(groups, [Some("secp256r1"), Some("X25519")]);
    }
}
