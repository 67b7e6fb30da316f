//! TLS on rustls: transport sockets for clusters (`UpstreamTlsContext`) and filter
//! chains (`DownstreamTlsContext`), the SDS secret store and subscriptions, and peer
//! certificate checks (trusted CAs, SAN matchers, SPIFFE identities).
//!
//! The crypto provider is *ring*: it builds from source in seconds with no C toolchain
//! beyond cc, which keeps CI and the Istio image build simple, and it has the suites and
//! curves Istio uses (ECDHE with AES-GCM / ChaCha20-Poly1305, X25519, P-256, P-384).
//! FIPS 140-3 needs aws-lc-rs' FIPS module instead, which pilotfish does not build; nor
//! does it offer the post-quantum X25519MLKEM768 group (aws-lc-rs only).
pub mod certs;
pub mod context;
pub mod sds;
pub mod secrets;
pub mod verify;

pub use context::{ClientStream, ClientTls, PeerInfo, ServerTls, TlsStats};
pub use secrets::SecretStore;

/// The process's crypto provider (see the module docs for why ring).
pub fn provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::ring::default_provider()
}
