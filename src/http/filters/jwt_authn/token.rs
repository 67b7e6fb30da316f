//! A JSON Web Token parsed as Envoy's verifier library parses it, and the failures it
//! reports, with their exact texts (they are the 401 bodies clients see).
use serde_json::{Map, Value};

use super::jwks::{ALGORITHMS, Jwks, b64url};

/// Why a token was not accepted (Envoy's `jwt_verify::Status`), in its enum order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Missing = 1,
    NotYetValid = 2,
    Expired = 3,
    BadFormat = 4,
    HeaderBadBase64 = 5,
    HeaderBadJson = 6,
    HeaderBadAlg = 7,
    HeaderAlgUnsupported = 8,
    HeaderBadKid = 9,
    PayloadBadBase64 = 10,
    PayloadBadJson = 11,
    BadIss = 12,
    BadSub = 13,
    IatNotInteger = 14,
    IatNotPositive = 15,
    NbfNotInteger = 16,
    NbfNotPositive = 17,
    ExpNotInteger = 18,
    ExpNotPositive = 19,
    BadJti = 20,
    BadAud = 21,
    SignatureBadBase64 = 22,
    Ed25519SignatureWrongLength = 23,
    UnknownIssuer = 24,
    AudienceNotAllowed = 25,
    VerificationFail = 26,
    JwksKidAlgMismatch = 32,
    JwksFetchFail = 40,
}

impl Status {
    /// The text Envoy answers with.
    pub fn text(self) -> &'static str {
        use Status::*;
        match self {
            Missing => "Jwt is missing",
            NotYetValid => "Jwt not yet valid",
            Expired => "Jwt is expired",
            BadFormat => {
                "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections"
            }
            HeaderBadBase64 => "Jwt header is an invalid Base64url encoded",
            HeaderBadJson => "Jwt header is an invalid JSON",
            HeaderBadAlg => "Jwt header [alg] field is required and must be a string",
            HeaderAlgUnsupported => "Jwt header [alg] is not supported",
            HeaderBadKid => "Jwt header [kid] field is not a string",
            PayloadBadBase64 => "Jwt payload is an invalid Base64url encoded",
            PayloadBadJson => "Jwt payload is an invalid JSON",
            BadIss => "Jwt payload [iss] field is not a string",
            BadSub => "Jwt payload [sub] field is not a string",
            IatNotInteger => "Jwt payload [iat] field is not an integer",
            IatNotPositive => "Jwt payload [iat] field is not a positive 64 bit integer",
            NbfNotInteger => "Jwt payload [nbf] field is not an integer",
            NbfNotPositive => "Jwt payload [nbf] field is not a positive 64 bit integer",
            ExpNotInteger => "Jwt payload [exp] field is not an integer",
            ExpNotPositive => "Jwt payload [exp] field is not a positive 64 bit integer",
            BadJti => "Jwt payload [jti] field is not a string",
            BadAud => "Jwt payload [aud] field is not a string or string list",
            SignatureBadBase64 => "Jwt signature is an invalid Base64url encoded",
            Ed25519SignatureWrongLength => "Jwt ED25519 signature is wrong length",
            UnknownIssuer => "Jwt issuer is not configured",
            AudienceNotAllowed => "Audiences in Jwt are not allowed",
            VerificationFail => "Jwt verification fails",
            JwksKidAlgMismatch => "Jwks doesn't have key to match kid or alg from Jwt",
            JwksFetchFail => "Jwks remote fetch is failed",
        }
    }

    /// A failure the client caused, rather than "no token" or "not ours"; in a
    /// `requires_any` group these outrank the others in the answer.
    pub fn is_real_failure(self) -> bool {
        !matches!(self, Status::Missing | Status::UnknownIssuer)
    }
}

/// A parsed (not yet verified) token.
#[derive(Debug, Clone)]
pub struct Jwt {
    pub alg: String,
    pub kid: Option<String>,
    pub iss: String,
    pub sub: String,
    pub aud: Vec<String>,
    pub nbf: u64,
    pub exp: u64,
    pub header: Map<String, Value>,
    pub payload: Map<String, Value>,
    /// The payload segment as it came (what `forward_payload_header` carries).
    pub payload_b64: String,
    /// `header.payload`, what the signature covers.
    signed: String,
    signature: Vec<u8>,
}

fn time_claim(
    payload: &Map<String, Value>,
    name: &str,
    not_int: Status,
    not_pos: Status,
) -> Result<u64, Status> {
    match payload.get(name) {
        None => Ok(0),
        Some(Value::Number(n)) => {
            let f = n.as_f64().ok_or(not_int)?;
            if !(0.0..18_446_744_073_709_551_616.0).contains(&f) {
                return Err(not_pos);
            }
            Ok(f as u64)
        }
        Some(_) => Err(not_int),
    }
}

fn string_claim(payload: &Map<String, Value>, name: &str, bad: Status) -> Result<String, Status> {
    match payload.get(name) {
        None => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(bad),
    }
}

impl Jwt {
    pub fn parse(token: &str) -> Result<Jwt, Status> {
        let parts: Vec<&str> = token.split('.').filter(|p| !p.is_empty()).collect();
        let [h, p, s] = parts[..] else {
            return Err(Status::BadFormat);
        };
        let header_bytes = b64url(h).ok_or(Status::HeaderBadBase64)?;
        let header: Map<String, Value> =
            serde_json::from_slice(&header_bytes).map_err(|_| Status::HeaderBadJson)?;
        let alg = match header.get("alg") {
            Some(Value::String(a)) => a.clone(),
            _ => return Err(Status::HeaderBadAlg),
        };
        if !ALGORITHMS.contains(&alg.as_str()) {
            return Err(Status::HeaderAlgUnsupported);
        }
        let kid = match header.get("kid") {
            None => None,
            Some(Value::String(k)) => Some(k.clone()),
            Some(_) => return Err(Status::HeaderBadKid),
        };
        let payload_bytes = b64url(p).ok_or(Status::PayloadBadBase64)?;
        let payload: Map<String, Value> =
            serde_json::from_slice(&payload_bytes).map_err(|_| Status::PayloadBadJson)?;
        let iss = string_claim(&payload, "iss", Status::BadIss)?;
        let sub = string_claim(&payload, "sub", Status::BadSub)?;
        time_claim(
            &payload,
            "iat",
            Status::IatNotInteger,
            Status::IatNotPositive,
        )?;
        let nbf = time_claim(
            &payload,
            "nbf",
            Status::NbfNotInteger,
            Status::NbfNotPositive,
        )?;
        let exp = time_claim(
            &payload,
            "exp",
            Status::ExpNotInteger,
            Status::ExpNotPositive,
        )?;
        string_claim(&payload, "jti", Status::BadJti)?;
        let aud = match payload.get("aud") {
            None => Vec::new(),
            Some(Value::String(a)) => vec![a.clone()],
            Some(Value::Array(list)) => list
                .iter()
                .map(|v| v.as_str().map(str::to_owned).ok_or(Status::BadAud))
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(Status::BadAud),
        };
        let signature = b64url(s).ok_or(Status::SignatureBadBase64)?;
        Ok(Jwt {
            alg,
            kid,
            iss,
            sub,
            aud,
            nbf,
            exp,
            header,
            payload,
            payload_b64: p.to_owned(),
            signed: format!("{h}.{p}"),
            signature,
        })
    }

    /// `nbf` and `exp` against `now` (whole seconds), each with `skew` seconds of grace.
    pub fn check_time(&self, now: u64, skew: u64) -> Result<(), Status> {
        if now.saturating_add(skew) < self.nbf {
            return Err(Status::NotYetValid);
        }
        if self.exp != 0 && now > self.exp.saturating_add(skew) {
            return Err(Status::Expired);
        }
        Ok(())
    }

    /// Whether one of the token's audiences is allowed (any, when none are listed). Both
    /// sides lose a leading `http://`/`https://` and one trailing `/` first.
    pub fn audience_allowed(&self, allowed: &[String]) -> bool {
        fn clean(a: &str) -> &str {
            let a = a
                .strip_prefix("https://")
                .or_else(|| a.strip_prefix("http://"))
                .unwrap_or(a);
            a.strip_suffix('/').unwrap_or(a)
        }
        allowed.is_empty()
            || self
                .aud
                .iter()
                .any(|a| allowed.iter().any(|b| clean(a) == clean(b)))
    }

    /// The signature against the key set: a key is tried unless both kids are set and
    /// differ, or the key names another algorithm.
    pub fn verify(&self, jwks: &Jwks) -> Result<(), Status> {
        if self.alg == "EdDSA" && self.signature.len() != 64 {
            return Err(Status::Ed25519SignatureWrongLength);
        }
        let mut tried = false;
        for key in &jwks.keys {
            if let (Some(a), Some(b)) = (&self.kid, &key.kid)
                && a != b
            {
                continue;
            }
            if key.alg.as_deref().is_some_and(|a| a != self.alg) {
                continue;
            }
            tried = true;
            if key.fits(&self.alg) && key.verify(&self.alg, self.signed.as_bytes(), &self.signature)
            {
                return Ok(());
            }
        }
        Err(if tried {
            Status::VerificationFail
        } else {
            Status::JwksKidAlgMismatch
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(v: &str) -> String {
        data_encoding::BASE64URL_NOPAD.encode(v.as_bytes())
    }

    fn hs256(payload: &str, kid: Option<&str>) -> String {
        let header = match kid {
            Some(k) => format!(r#"{{"alg":"HS256","kid":"{k}"}}"#),
            None => r#"{"alg":"HS256"}"#.to_owned(),
        };
        let signed = format!("{}.{}", enc(&header), enc(payload));
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"secret");
        let sig = ring::hmac::sign(&key, signed.as_bytes());
        format!(
            "{signed}.{}",
            data_encoding::BASE64URL_NOPAD.encode(sig.as_ref())
        )
    }

    #[test]
    fn parse_failures_carry_envoys_texts() {
        assert_eq!(Jwt::parse("a.b").unwrap_err(), Status::BadFormat);
        assert_eq!(Jwt::parse("!!.b.c").unwrap_err(), Status::HeaderBadBase64);
        let h = enc(r#"{"alg":"none"}"#);
        assert_eq!(
            Jwt::parse(&format!("{h}.e30.c2ln")).unwrap_err(),
            Status::HeaderAlgUnsupported
        );
        let h = enc(r#"{"alg":"HS256"}"#);
        let p = enc(r#"{"exp":-1}"#);
        assert_eq!(
            Jwt::parse(&format!("{h}.{p}.c2ln")).unwrap_err(),
            Status::ExpNotPositive
        );
        let p = enc(r#"{"aud":[1]}"#);
        assert_eq!(
            Jwt::parse(&format!("{h}.{p}.c2ln")).unwrap_err(),
            Status::BadAud
        );
        assert_eq!(
            Status::AudienceNotAllowed.text(),
            "Audiences in Jwt are not allowed"
        );
    }

    #[test]
    fn time_audience_and_signature() {
        let t = Jwt::parse(&hs256(
            r#"{"iss":"i","aud":"https://svc/","exp":1000,"nbf":500}"#,
            Some("k1"),
        ))
        .unwrap();
        assert_eq!(t.check_time(1060, 60), Ok(()));
        assert_eq!(t.check_time(1061, 60), Err(Status::Expired));
        assert_eq!(t.check_time(439, 60), Err(Status::NotYetValid));
        assert!(t.audience_allowed(&["http://svc".into()]));
        assert!(t.audience_allowed(&[]));
        assert!(!t.audience_allowed(&["other".into()]));
        let good = Jwks::parse(r#"{"keys":[{"kty":"oct","k":"c2VjcmV0","kid":"k1"}]}"#).unwrap();
        let other_kid =
            Jwks::parse(r#"{"keys":[{"kty":"oct","k":"c2VjcmV0","kid":"k2"}]}"#).unwrap();
        let wrong = Jwks::parse(r#"{"keys":[{"kty":"oct","k":"b3RoZXI"}]}"#).unwrap();
        assert_eq!(t.verify(&good), Ok(()));
        assert_eq!(t.verify(&other_kid), Err(Status::JwksKidAlgMismatch));
        assert_eq!(t.verify(&wrong), Err(Status::VerificationFail));
    }
}
