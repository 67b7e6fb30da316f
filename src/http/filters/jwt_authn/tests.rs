//! The requirement logic and outputs, on HMAC tokens minted here.
use super::*;
use crate::config::PathMatch;

const KEY_A: &str = "c2VjcmV0LWE"; // "secret-a"
const KEY_B: &str = "c2VjcmV0LWI"; // "secret-b"

fn mint(secret: &[u8], payload: serde_json::Value) -> String {
    let enc = |b: &[u8]| data_encoding::BASE64URL_NOPAD.encode(b);
    let signed = format!(
        "{}.{}",
        enc(br#"{"alg":"HS256","typ":"JWT"}"#),
        enc(payload.to_string().as_bytes())
    );
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    format!(
        "{signed}.{}",
        enc(ring::hmac::sign(&key, signed.as_bytes()).as_ref())
    )
}

fn provider(name: &str, issuer: &str, key: &str) -> Arc<Provider> {
    Arc::new(Provider {
        name: name.into(),
        issuer: issuer.into(),
        audiences: vec![],
        subjects: None,
        locations: Location::defaults(),
        forward: false,
        forward_payload_header: None,
        pad_forward_payload_header: false,
        payload_in_metadata: Some(issuer.into()),
        header_in_metadata: None,
        failed_status_in_metadata: None,
        space_delimited_claims: vec!["scope".into()],
        claim_to_headers: vec![],
        clock_skew: 60,
        require_expiration: false,
        max_lifetime: None,
        keys: Keys::Local(Arc::new(
            Jwks::parse(&format!(r#"{{"keys":[{{"kty":"oct","k":"{key}"}}]}}"#)).unwrap(),
        )),
    })
}

/// Istio's shape: each provider or no token at all.
fn istio_like(allow_missing: bool) -> JwtAuthnConfig {
    let mut providers = BTreeMap::new();
    providers.insert("origins-0".into(), provider("origins-0", "iss-a", KEY_A));
    providers.insert("origins-1".into(), provider("origins-1", "iss-b", KEY_B));
    let children = vec![
        Requirement::Provider {
            name: "origins-0".into(),
            audiences: None,
        },
        Requirement::Provider {
            name: "origins-1".into(),
            audiences: None,
        },
    ];
    JwtAuthnConfig {
        providers,
        rules: vec![(
            RouteMatch::path(PathMatch::Prefix("/".into())),
            Some(Requirement::Any {
                children,
                allow_missing,
                allow_missing_or_failed: false,
            }),
        )],
        requirement_map: BTreeMap::new(),
        bypass_cors_preflight: true,
        strip_failure_response: false,
        stat_prefix: String::new(),
    }
}

struct Outcome {
    status: Option<u16>,
    body: String,
    www: Option<String>,
    metadata: DynamicMetadata,
    outputs: Option<Outputs>,
}

async fn run(cfg: &JwtAuthnConfig, headers: &[(&str, &str)], path: &str) -> Outcome {
    let mut h = HeaderMap::new();
    for (k, v) in headers {
        h.append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    let head = RequestHead {
        method: "GET",
        scheme: "http",
        authority: "svc",
        path_and_query: path,
        headers: &h,
    };
    let store = Arc::new(Store::default());
    let stats = JwtAuthnStats::new(&store, "in", cfg);
    let mut metadata = DynamicMetadata::default();
    let clusters = ClusterMap::default();
    let verdict = cfg
        .check(
            &clusters,
            Request {
                head: &head,
                scheme: "http",
            },
            None,
            &mut metadata,
            &stats,
        )
        .await;
    match verdict {
        Verdict::Allow(o) => Outcome {
            status: None,
            body: String::new(),
            www: None,
            metadata,
            outputs: Some(o),
        },
        Verdict::Reply(resp) => {
            let status = resp.status().as_u16();
            let www = resp
                .headers()
                .get(header::WWW_AUTHENTICATE)
                .map(|v| v.to_str().unwrap().to_owned());
            let body = http_body_util::BodyExt::collect(resp.into_body())
                .await
                .unwrap()
                .to_bytes();
            Outcome {
                status: Some(status),
                body: String::from_utf8_lossy(&body).into_owned(),
                www,
                metadata,
                outputs: None,
            }
        }
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test]
async fn requires_any_with_allow_missing_is_istios_request_authentication() {
    let cfg = istio_like(true);
    // No token: allowed.
    let o = run(&cfg, &[], "/").await;
    assert_eq!(o.status, None);
    // Either issuer's token: allowed, its payload in the metadata under the issuer,
    // `scope` split on spaces, the Authorization header removed.
    let t = mint(
        b"secret-b",
        serde_json::json!({"iss":"iss-b","sub":"u","scope":"a b","exp": now() + 600}),
    );
    let o = run(&cfg, &[("authorization", &format!("Bearer {t}"))], "/").await;
    assert_eq!(o.status, None);
    assert_eq!(
        o.metadata.get(JWT_AUTHN, &["iss-b".into(), "scope".into()]),
        Some(&serde_json::json!(["a", "b"]))
    );
    assert_eq!(o.outputs.unwrap().remove, vec![header::AUTHORIZATION]);
    // An unknown issuer is not "missing": 401 with Envoy's text and header.
    let t = mint(b"secret-b", serde_json::json!({"iss":"other"}));
    let o = run(&cfg, &[("authorization", &format!("Bearer {t}"))], "/p?x=1").await;
    assert_eq!(o.status, Some(401));
    assert_eq!(o.body, "Jwt issuer is not configured");
    assert_eq!(
        o.www.as_deref(),
        Some(r#"Bearer realm="http://svc/p?x=1", error="invalid_token""#)
    );
    // Expired: the real failure outranks the other child's.
    let t = mint(
        b"secret-a",
        serde_json::json!({"iss":"iss-a","exp": now() - 120}),
    );
    let o = run(&cfg, &[("authorization", &format!("Bearer {t}"))], "/").await;
    assert_eq!((o.status, o.body.as_str()), (Some(401), "Jwt is expired"));
    // Signed with the other provider's key.
    let t = mint(b"secret-b", serde_json::json!({"iss":"iss-a"}));
    let o = run(&cfg, &[("authorization", &format!("Bearer {t}"))], "/").await;
    assert_eq!(
        (o.status, o.body.as_str()),
        (Some(401), "Jwt verification fails")
    );
}

#[tokio::test]
async fn without_allow_missing_a_missing_token_is_refused() {
    let cfg = istio_like(false);
    let o = run(&cfg, &[], "/").await;
    assert_eq!((o.status, o.body.as_str()), (Some(401), "Jwt is missing"));
    assert_eq!(o.www.as_deref(), Some(r#"Bearer realm="http://svc/""#));
    // The query parameter is a default location too.
    let t = mint(b"secret-a", serde_json::json!({"iss":"iss-a"}));
    let o = run(&cfg, &[], &format!("/?access_token={t}")).await;
    assert_eq!(o.status, None);
    assert_eq!(o.outputs.unwrap().remove_params, vec!["access_token"]);
}

#[tokio::test]
async fn audiences_refuse_with_403_and_cors_preflights_pass() {
    let mut cfg = istio_like(false);
    let mut p = Arc::try_unwrap(cfg.providers.remove("origins-0").unwrap()).unwrap();
    p.audiences = vec!["https://svc.example/".into()];
    cfg.providers.insert("origins-0".into(), Arc::new(p));
    let t = mint(b"secret-a", serde_json::json!({"iss":"iss-a","aud":"x"}));
    let o = run(&cfg, &[("authorization", &format!("Bearer {t}"))], "/").await;
    assert_eq!(
        (o.status, o.body.as_str()),
        (Some(403), "Audiences in Jwt are not allowed")
    );
    let t = mint(
        b"secret-a",
        serde_json::json!({"iss":"iss-a","aud":["x","svc.example"]}),
    );
    let o = run(&cfg, &[("authorization", &format!("Bearer {t}"))], "/").await;
    assert_eq!(o.status, None);
}

#[test]
fn claims_render_as_envoy_renders_them() {
    let p = serde_json::json!({"s":"x","n":3,"f":1.5,"b":true,"o":{"k":"v"},"e":""});
    let p = p.as_object().unwrap();
    let c = |path: &str| claim_value(p, &path.split('.').map(String::from).collect::<Vec<_>>());
    assert_eq!(c("s").as_deref(), Some("x"));
    assert_eq!(c("n").as_deref(), Some("3"));
    assert_eq!(c("f").as_deref(), Some("1.500000"));
    assert_eq!(c("b").as_deref(), Some("true"));
    assert_eq!(c("o.k").as_deref(), Some("v"));
    assert_eq!(c("o").as_deref(), Some("eyJrIjoidiJ9"));
    assert_eq!(c("e"), None);
    assert_eq!(c("missing"), None);
}
