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

/// Writes a CA bundle; returns its path.
pub fn write_ca(dir: &Path, name: &str, pem: &str) -> PathBuf {
    let p = dir.join(format!("{name}.pem"));
    std::fs::write(&p, pem).unwrap();
    p
}
