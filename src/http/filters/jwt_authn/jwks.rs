//! A JSON Web Key Set (RFC 7517) and signature verification against it, on *ring*:
//! RSA (RS*/PS*), EC P-256/P-384 (ES256/ES384), Ed25519 (EdDSA) and shared secrets
//! (HS*). Keys *ring* cannot use (P-521, RSA under 2048 bits) are kept out of the set at
//! parse time, so a token signed with one finds no key rather than a wrong answer.
use ring::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey, VerificationAlgorithm};
use serde_json::Value;

/// One usable key.
#[derive(Debug, Clone)]
pub struct Key {
    pub kid: Option<String>,
    /// The key's own `alg`, when it names one.
    pub alg: Option<String>,
    material: Material,
}

#[derive(Debug, Clone)]
enum Material {
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    /// The uncompressed point (0x04 ‖ x ‖ y) and its curve.
    Ec {
        curve: Curve,
        point: Vec<u8>,
    },
    Ed25519(Vec<u8>),
    Oct(Vec<u8>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Curve {
    P256,
    P384,
}

/// A parsed key set.
#[derive(Debug, Clone, Default)]
pub struct Jwks {
    pub keys: Vec<Key>,
}

/// Decodes base64url with or without padding (JWKS publishers use both).
pub fn b64url(s: &str) -> Option<Vec<u8>> {
    data_encoding::BASE64URL_NOPAD
        .decode(s.trim_end_matches('=').as_bytes())
        .ok()
}

impl Jwks {
    /// Parses a JWKS document (`{"keys": [...]}`). As in Envoy, a key with bad fields is
    /// skipped, and the set is an error only when no key is left (with the first key's
    /// error, in Envoy's words).
    pub fn parse(text: &str) -> Result<Jwks, String> {
        let v: Value =
            serde_json::from_str(text).map_err(|_| "Jwks is an invalid JSON".to_owned())?;
        let list = match v.get("keys") {
            Some(Value::Array(keys)) => keys,
            Some(_) => return Err("[keys] in Jwks is not an array".into()),
            None => return Err("Jwks does not have [keys] field".into()),
        };
        let mut keys = Vec::new();
        let mut first_error = None;
        for k in list.iter().filter(|k| k.is_object()) {
            match Key::parse(k) {
                Ok(Some(key)) => keys.push(key),
                Ok(None) => {}
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        if keys.is_empty() {
            return Err(
                first_error.unwrap_or_else(|| "Jwks doesn't have any valid public key".into())
            );
        }
        Ok(Jwks { keys })
    }
}

fn field<'a>(k: &'a Value, name: &str) -> Result<Option<&'a str>, String> {
    match k.get(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(format!("[{name}] is not a string")),
    }
}

fn bytes(k: &Value, name: &str, what: &str) -> Result<Vec<u8>, String> {
    let s = field(k, name)?.ok_or_else(|| format!("[{name}] field is missing for {what}"))?;
    b64url(s).ok_or_else(|| format!("[{name}] field is not base64url for {what}"))
}

impl Key {
    /// One JWK; `None` for a key that is not for signatures or that *ring* cannot use.
    fn parse(k: &Value) -> Result<Option<Key>, String> {
        let kty = match k.get("kty") {
            None => return Err("[kty] is missing in [keys]".into()),
            Some(Value::String(s)) => s.as_str(),
            Some(_) => return Err("[kty] is bad in [keys]".into()),
        };
        let kid = field(k, "kid")?.map(str::to_owned);
        let alg = field(k, "alg")?.map(str::to_owned);
        let material = match kty {
            "RSA" => {
                let (n, e) = match (bytes(k, "n", "a RSA key"), bytes(k, "e", "a RSA key")) {
                    (Ok(n), Ok(e)) if matches!(e.as_slice(), [3] | [1, 0, 1]) => (n, e),
                    _ => {
                        return Err(
                            "Jwks RSA [n] or [e] field is missing or has a parse error".into()
                        );
                    }
                };
                let bits = n.iter().skip_while(|b| **b == 0).count() * 8;
                if bits < 2048 {
                    return Ok(None);
                }
                Material::Rsa { n, e }
            }
            "EC" => {
                let curve = match field(k, "crv")? {
                    Some("P-256") | None => Curve::P256,
                    Some("P-384") => Curve::P384,
                    Some("P-521") => return Ok(None),
                    Some(_) => {
                        return Err("[crv] or [alg] field is not supported for an EC key".into());
                    }
                };
                let (x, y) = (bytes(k, "x", "an EC key")?, bytes(k, "y", "an EC key")?);
                let len = if curve == Curve::P256 { 32 } else { 48 };
                if x.len() != len || y.len() != len {
                    return Err("Jwks EC [x] and [y] fields have a parse error.".into());
                }
                let mut point = vec![4u8];
                point.extend(x);
                point.extend(y);
                Material::Ec { curve, point }
            }
            "OKP" => match field(k, "crv")? {
                Some("Ed25519") => {
                    let x = bytes(k, "x", "an OKP key")?;
                    if x.len() != 32 {
                        return Err("Jwks OKP [x] field is wrong length.".into());
                    }
                    Material::Ed25519(x)
                }
                _ => return Err("[crv] field is not supported for an OKP key".into()),
            },
            "oct" => match bytes(k, "k", "an HMAC key") {
                Ok(key) if !key.is_empty() => Material::Oct(key),
                _ => return Err("Jwks Oct key is an invalid Base64".into()),
            },
            _ => return Err("[kty] is not supported in [keys]".into()),
        };
        Ok(Some(Key { kid, alg, material }))
    }

    /// Whether this key can check a signature made with `alg`.
    pub fn fits(&self, alg: &str) -> bool {
        if self.alg.as_deref().is_some_and(|a| a != alg) {
            return false;
        }
        match (&self.material, alg) {
            (Material::Rsa { .. }, a) => a.starts_with("RS") || a.starts_with("PS"),
            (Material::Ec { curve, .. }, a) => {
                matches!((curve, a), (Curve::P256, "ES256") | (Curve::P384, "ES384"))
            }
            (Material::Ed25519(_), a) => a == "EdDSA",
            (Material::Oct(_), a) => a.starts_with("HS"),
        }
    }

    /// Checks `sig` over `msg` (the token's `header.payload`).
    pub fn verify(&self, alg: &str, msg: &[u8], sig: &[u8]) -> bool {
        match &self.material {
            Material::Rsa { n, e } => {
                let params: &signature::RsaParameters = match alg {
                    "RS256" => &signature::RSA_PKCS1_2048_8192_SHA256,
                    "RS384" => &signature::RSA_PKCS1_2048_8192_SHA384,
                    "RS512" => &signature::RSA_PKCS1_2048_8192_SHA512,
                    "PS256" => &signature::RSA_PSS_2048_8192_SHA256,
                    "PS384" => &signature::RSA_PSS_2048_8192_SHA384,
                    "PS512" => &signature::RSA_PSS_2048_8192_SHA512,
                    _ => return false,
                };
                RsaPublicKeyComponents { n, e }
                    .verify(params, msg, sig)
                    .is_ok()
            }
            Material::Ec { curve, point } => {
                let algorithm: &dyn VerificationAlgorithm = match curve {
                    Curve::P256 => &signature::ECDSA_P256_SHA256_FIXED,
                    Curve::P384 => &signature::ECDSA_P384_SHA384_FIXED,
                };
                UnparsedPublicKey::new(algorithm, point)
                    .verify(msg, sig)
                    .is_ok()
            }
            Material::Ed25519(x) => UnparsedPublicKey::new(&signature::ED25519, x)
                .verify(msg, sig)
                .is_ok(),
            Material::Oct(k) => {
                let algorithm = match alg {
                    "HS256" => ring::hmac::HMAC_SHA256,
                    "HS384" => ring::hmac::HMAC_SHA384,
                    "HS512" => ring::hmac::HMAC_SHA512,
                    _ => return false,
                };
                ring::hmac::verify(&ring::hmac::Key::new(algorithm, k), msg, sig).is_ok()
            }
        }
    }
}

/// The algorithms a token may be signed with.
pub const ALGORITHMS: &[&str] = &[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "HS256",
    "HS384", "HS512", "EdDSA",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sets_and_skips_keys_ring_cannot_use() {
        let set = Jwks::parse(
            r#"{"keys":[{"kty":"oct","k":"c2VjcmV0","kid":"a"},
                {"kty":"EC","crv":"P-521","x":"AA","y":"AA"},
                {"kty":"RSA","n":"AQAB","e":"AQAB"}]}"#,
        )
        .unwrap();
        assert_eq!(set.keys.len(), 1);
        assert!(set.keys[0].fits("HS256"));
        assert!(!set.keys[0].fits("RS256"));
        assert_eq!(
            Jwks::parse("{}").unwrap_err(),
            "Jwks does not have [keys] field"
        );
        assert_eq!(Jwks::parse("nope").unwrap_err(), "Jwks is an invalid JSON");
        assert_eq!(
            Jwks::parse(r#"{"keys":[{"kty":"XYZ"}]}"#).unwrap_err(),
            "[kty] is not supported in [keys]"
        );
        assert_eq!(
            Jwks::parse(r#"{"keys":[]}"#).unwrap_err(),
            "Jwks doesn't have any valid public key"
        );
    }

    #[test]
    fn hmac_verifies_and_refuses() {
        let set = Jwks::parse(r#"{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}"#).unwrap();
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"secret");
        let sig = ring::hmac::sign(&key, b"a.b");
        assert!(set.keys[0].verify("HS256", b"a.b", sig.as_ref()));
        assert!(!set.keys[0].verify("HS256", b"a.c", sig.as_ref()));
        assert!(!set.keys[0].verify("HS384", b"a.b", sig.as_ref()));
    }
}
