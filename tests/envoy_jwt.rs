//! JWT authentication (`envoy.filters.http.jwt_authn`) and the RBAC `metadata`
//! principals that read its payload, pilotfish and Envoy 1.40 on the same bootstrap.
//!
//! The `istio` listener carries what istiod 1.30 renders for two RequestAuthentication
//! jwtRules (providers `origins-<i>` sorted by issuer, `payload_in_metadata: payload`,
//! the `requires_any` + `requires_all` rule, inline JWKS) and an AuthorizationPolicy
//! with `requestPrincipals` and `request.auth.claims[...]` conditions (metadata
//! matchers on `payload.*`). The `generic` listener covers the rest: a remote JWKS
//! served by a local HTTP server and rotated, audiences, custom token locations,
//! `forward_payload_header`, `claim_to_headers`, `requires_all`,
//! `allow_missing_or_failed` and per-route `requirement_name` / `disabled`.
mod common;

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use bytes::Bytes;
use common::*;
use http_body_util::Full;
use hyper::{Request, Response, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo};
use ring::{
    rand::SystemRandom,
    signature::{self, EcdsaKeyPair, KeyPair, RsaKeyPair},
};

const JWT: &str =
    "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication";
const JWT_ROUTE: &str =
    "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.PerRouteConfig";
const RBAC: &str = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC";
const ISS_RSA: &str = "testing@secure.istio.io";
const ISS_EC: &str = "https://issuer-two.example";

fn b64(b: &[u8]) -> String {
    data_encoding::BASE64URL_NOPAD.encode(b)
}

/// A signing key and its public JWK.
enum Signer {
    Rsa(RsaKeyPair, String),
    Ec(EcdsaKeyPair, String),
}

impl Signer {
    fn rsa(kid: &str) -> Signer {
        let der = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/jwt/rs256-test-key.der"
        ))
        .unwrap();
        Signer::Rsa(RsaKeyPair::from_der(&der).unwrap(), kid.into())
    }

    fn ec(kid: &str) -> Signer {
        let rng = SystemRandom::new();
        let alg = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
        Signer::Ec(
            EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).unwrap(),
            kid.into(),
        )
    }

    fn jwk(&self) -> String {
        match self {
            Signer::Rsa(k, kid) => {
                let p = ring::rsa::PublicKeyComponents::<Vec<u8>>::from(k.public());
                format!(
                    r#"{{"kty":"RSA","kid":"{kid}","alg":"RS256","n":"{}","e":"{}"}}"#,
                    b64(&p.n),
                    b64(&p.e)
                )
            }
            Signer::Ec(k, kid) => {
                let point = k.public_key().as_ref();
                format!(
                    r#"{{"kty":"EC","kid":"{kid}","crv":"P-256","x":"{}","y":"{}"}}"#,
                    b64(&point[1..33]),
                    b64(&point[33..65])
                )
            }
        }
    }

    fn token(&self, claims: serde_json::Value) -> String {
        let (alg, kid) = match self {
            Signer::Rsa(_, kid) => ("RS256", kid),
            Signer::Ec(_, kid) => ("ES256", kid),
        };
        let header = format!(r#"{{"alg":"{alg}","kid":"{kid}","typ":"JWT"}}"#);
        let signed = format!(
            "{}.{}",
            b64(header.as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let rng = SystemRandom::new();
        let sig = match self {
            Signer::Rsa(k, _) => {
                let mut sig = vec![0; k.public().modulus_len()];
                k.sign(
                    &signature::RSA_PKCS1_SHA256,
                    &rng,
                    signed.as_bytes(),
                    &mut sig,
                )
                .unwrap();
                sig
            }
            Signer::Ec(k, _) => k.sign(&rng, signed.as_bytes()).unwrap().as_ref().to_vec(),
        };
        format!("{signed}.{}", b64(&sig))
    }
}

fn jwks(keys: &[&Signer]) -> String {
    let keys: Vec<String> = keys.iter().map(|k| k.jwk()).collect();
    format!(r#"{{"keys":[{}]}}"#, keys.join(","))
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A JWKS endpoint whose document can be replaced or taken down (503).
#[derive(Clone)]
struct JwksServer {
    addr: SocketAddr,
    doc: Arc<Mutex<Option<String>>>,
}

impl JwksServer {
    async fn start(doc: String) -> JwksServer {
        let doc = Arc::new(Mutex::new(Some(doc)));
        let d = doc.clone();
        let addr = accept_each(move |stream| {
            let d = d.clone();
            async move {
                let svc = service_fn(move |_req: Request<hyper::body::Incoming>| {
                    let current = d.lock().unwrap().clone();
                    async move {
                        Ok::<_, Infallible>(match current {
                            Some(doc) => Response::new(Full::new(Bytes::from(doc))),
                            None => Response::builder()
                                .status(503)
                                .body(Full::new(Bytes::new()))
                                .unwrap(),
                        })
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            }
        })
        .await;
        JwksServer { addr, doc }
    }

    fn set(&self, doc: Option<String>) {
        *self.doc.lock().unwrap() = doc;
    }
}

/// istiod's metadata principal on a payload claim (`a.b`: the nested claim `b` of `a`).
fn metadata(claim: &str, value: &str) -> String {
    let keys: String = claim
        .split('.')
        .map(|k| format!(", {{ key: {k} }}"))
        .collect();
    format!(
        "{{ metadata: {{ filter: envoy.filters.http.jwt_authn, path: [{{ key: payload }}{keys}], value: {value} }} }}"
    )
}

/// istiod's matcher for one claim value: the claim as a list containing it, or equal.
fn claim_is(claim: &str, exact: &str) -> String {
    metadata(
        claim,
        &format!(
            "{{ or_match: {{ value_matchers: [{{ list_match: {{ one_of: {{ string_match: {{ exact: \"{exact}\" }} }} }} }}, {{ string_match: {{ exact: \"{exact}\" }} }}] }} }}"
        ),
    )
}

fn bootstrap(up: SocketAddr, jwks_up: SocketAddr, rsa: &Signer, ec: &Signer) -> String {
    // The inline JWKS as istiod inlines it: a JSON string.
    let inline_rsa = serde_json::to_string(&jwks(&[rsa])).unwrap();
    let inline_ec = serde_json::to_string(&jwks(&[ec])).unwrap();
    let principal = |iss: &str, sub: &str| {
        format!(
            "{{ and_ids: {{ ids: [{}, {}] }} }}",
            metadata(
                "iss",
                &format!("{{ string_match: {{ exact: \"{iss}\" }} }}")
            ),
            metadata(
                "sub",
                &format!("{{ string_match: {{ exact: \"{sub}\" }} }}")
            )
        )
    };
    let anyone = format!(
        "{{ and_ids: {{ ids: [{}, {}] }} }}",
        metadata("iss", "{ string_match: { safe_regex: { regex: \".+\" } } }"),
        metadata("sub", "{ string_match: { safe_regex: { regex: \".+\" } } }")
    );
    let alice = principal(ISS_RSA, "alice");
    let admins = claim_is("groups", "admins");
    let writers = claim_is("scope", "write");
    let nested = claim_is("org.team", "blue");
    format!(
        r#"
admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
static_resources:
  listeners:
  - name: istio
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: inbound_0.0.0.0_8080
          route_config:
            virtual_hosts:
            - name: inbound|http|8080
              domains: ["*"]
              routes:
              - match: {{ prefix: / }}
                route: {{ cluster: backend }}
          http_filters:
          - name: envoy.filters.http.jwt_authn
            typed_config:
              "@type": {JWT}
              providers:
                origins-0:
                  issuer: {ISS_EC}
                  local_jwks: {{ inline_string: {inline_ec} }}
                  payload_in_metadata: payload
                  normalize_payload_in_metadata: {{ space_delimited_claims: [permission, scope] }}
                origins-1:
                  issuer: {ISS_RSA}
                  audiences: [productpage.default.svc.cluster.local]
                  local_jwks: {{ inline_string: {inline_rsa} }}
                  payload_in_metadata: payload
                  normalize_payload_in_metadata: {{ space_delimited_claims: [permission, scope] }}
              rules:
              - match: {{ prefix: / }}
                requires:
                  requires_any:
                    requirements:
                    - provider_name: origins-0
                    - provider_name: origins-1
                    - requires_all:
                        requirements:
                        - requires_any: {{ requirements: [{{ provider_name: origins-0 }}, {{ allow_missing: {{}} }}] }}
                        - requires_any: {{ requirements: [{{ provider_name: origins-1 }}, {{ allow_missing: {{}} }}] }}
              bypass_cors_preflight: true
          - name: envoy.filters.http.rbac
            typed_config:
              "@type": {RBAC}
              rules:
                policies:
                  ns[default]-policy[jwt]-rule[0]:
                    permissions:
                    - and_rules: {{ rules: [{{ or_rules: {{ rules: [{{ url_path: {{ path: {{ prefix: /admin }} }} }}] }} }}] }}
                    principals:
                    - and_ids: {{ ids: [{alice}, {admins}] }}
                  ns[default]-policy[jwt]-rule[1]:
                    permissions:
                    - and_rules: {{ rules: [{{ or_rules: {{ rules: [{{ url_path: {{ path: {{ prefix: /write }} }} }}] }} }}] }}
                    principals:
                    - and_ids: {{ ids: [{anyone}, {writers}] }}
                  ns[default]-policy[jwt]-rule[2]:
                    permissions:
                    - and_rules: {{ rules: [{{ or_rules: {{ rules: [{{ url_path: {{ path: {{ prefix: /team }} }} }}] }} }}] }}
                    principals:
                    - and_ids: {{ ids: [{nested}] }}
                  ns[default]-policy[jwt]-rule[3]:
                    permissions:
                    - and_rules: {{ rules: [{{ or_rules: {{ rules: [{{ url_path: {{ path: {{ prefix: /read }} }} }}] }} }}] }}
                    principals:
                    - and_ids: {{ ids: [{anyone}] }}
                  ns[default]-policy[jwt]-rule[4]:
                    permissions:
                    - and_rules: {{ rules: [{{ or_rules: {{ rules: [{{ url_path: {{ path: {{ prefix: /public }} }} }}] }} }}] }}
                    principals:
                    - and_ids: {{ ids: [{{ not_id: {anyone} }}] }}
              shadow_rules_stat_prefix: istio_dry_run_allow_
          - name: envoy.filters.http.router
            typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }}
  - name: generic
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: generic
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{ prefix: /off }}
                route: {{ cluster: backend }}
                typed_per_filter_config:
                  envoy.filters.http.jwt_authn: {{ "@type": {JWT_ROUTE}, disabled: true }}
              - match: {{ prefix: /both }}
                route: {{ cluster: backend }}
                typed_per_filter_config:
                  envoy.filters.http.jwt_authn: {{ "@type": {JWT_ROUTE}, requirement_name: both }}
              - match: {{ prefix: /nosuch }}
                route: {{ cluster: backend }}
                typed_per_filter_config:
                  envoy.filters.http.jwt_authn: {{ "@type": {JWT_ROUTE}, requirement_name: nosuch }}
              - match: {{ prefix: / }}
                route: {{ cluster: backend }}
          http_filters:
          - name: envoy.filters.http.jwt_authn
            typed_config:
              "@type": {JWT}
              providers:
                remote:
                  issuer: {ISS_EC}
                  audiences: ["https://api.example/"]
                  remote_jwks:
                    http_uri: {{ uri: "http://jwks.example/keys", cluster: jwks, timeout: 2s }}
                    cache_duration: 2s
                  from_headers: [{{ name: x-token, value_prefix: "Token " }}]
                  from_params: [jwt]
                  forward_payload_header: x-jwt-payload
                  pad_forward_payload_header: true
                  claim_to_headers:
                  - {{ header_name: x-sub, claim_name: sub }}
                  - {{ header_name: x-team, claim_name: org.team }}
                  - {{ header_name: x-level, claim_name: level }}
                  - {{ header_name: x-org, claim_name: org }}
                  forward: true
                prefetched:
                  issuer: {ISS_EC}
                  remote_jwks:
                    http_uri: {{ uri: "http://jwks.example/keys", cluster: jwks, timeout: 2s }}
                    cache_duration: 600s
                    async_fetch: {{ failed_refetch_duration: 1s }}
                    retry_policy: {{ num_retries: 2 }}
                  from_headers: [{{ name: x-prefetched }}]
                local:
                  issuer: {ISS_RSA}
                  local_jwks: {{ inline_string: {inline_rsa} }}
                  forward: false
              rules:
              - match: {{ prefix: /lenient }}
                requires: {{ allow_missing_or_failed: {{}} }}
              - match: {{ prefix: /open }}
              - match: {{ prefix: /async }}
                requires: {{ provider_name: prefetched }}
              - match: {{ prefix: /aud }}
                requires: {{ provider_and_audiences: {{ provider_name: remote, audiences: [other.example] }} }}
              - match: {{ prefix: /either }}
                requires: {{ requires_any: {{ requirements: [{{ provider_name: remote }}, {{ provider_name: local }}] }} }}
              - match: {{ prefix: / }}
                requires: {{ provider_name: remote }}
              requirement_map:
                both:
                  requires_all: {{ requirements: [{{ provider_name: remote }}, {{ provider_name: local }}] }}
          - name: envoy.filters.http.router
            typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }}
  clusters:
{backend}{jwks}"#,
        backend = static_cluster("backend", &[up], false),
        jwks = static_cluster("jwks", &[jwks_up], false),
    )
}

/// Status, body, `www-authenticate`, and what the upstream saw of the headers the
/// filter touches.
async fn ask(
    proxy: &Proxy,
    up: &Upstream,
    listener: &str,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
) -> String {
    let before = up.requests().len();
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "svc.test");
    for (k, v) in headers {
        req = req.header(*k, v.as_str());
    }
    let (status, h, body) = send(
        proxy.listener(listener),
        false,
        req.body(Full::default()).unwrap(),
    )
    .await
    .unwrap();
    let mut out = format!("{} {}", status.as_u16(), String::from_utf8_lossy(&body));
    if let Some(w) = h.get("www-authenticate") {
        out.push_str(&format!(" [www-authenticate: {}]", w.to_str().unwrap()));
    }
    if let Some(seen) = up.requests().get(before) {
        for name in [
            "authorization",
            "x-token",
            "x-jwt-payload",
            "x-sub",
            "x-team",
            "x-level",
            "x-org",
        ] {
            let values: Vec<&str> = seen
                .headers
                .get_all(name)
                .iter()
                .map(|v| v.to_str().unwrap())
                .collect();
            if !values.is_empty() {
                out.push_str(&format!(" [{name}: {}]", values.join(" | ")));
            }
        }
        out.push_str(&format!(" [path {}]", seen.path));
    }
    out
}

/// Name, method, path, headers.
type Case = (
    &'static str,
    &'static str,
    String,
    Vec<(&'static str, String)>,
);

#[tokio::test]
async fn jwt_authentication_and_claims_authorization_match_envoy() {
    let Some(envoy) = reference_envoy() else {
        return;
    };
    let rsa = Signer::rsa("rsa-1");
    let ec = Signer::ec("ec-1");
    let ec2 = Signer::ec("ec-2");
    let stranger = Signer::ec("ec-1");
    let jwks_server = JwksServer::start(jwks(&[&ec])).await;
    let (up_ours, up_theirs) = (
        Upstream::start("ours").await,
        Upstream::start("theirs").await,
    );
    let ours = Proxy::start(&bootstrap(up_ours.addr, jwks_server.addr, &rsa, &ec)).await;
    let theirs = Proxy::start_bin(
        &envoy,
        &bootstrap(up_theirs.addr, jwks_server.addr, &rsa, &ec),
        &["--disable-hot-restart"],
    )
    .await;
    let exp = now() + 3600;
    let bearer = |t: String| ("authorization", format!("Bearer {t}"));
    let aud = "productpage.default.svc.cluster.local";
    let alice = rsa.token(serde_json::json!({
        "iss": ISS_RSA, "sub": "alice", "aud": aud, "exp": exp,
        "groups": ["dev", "admins"], "scope": "read write", "org": {"team": "blue"}
    }));
    let bob = rsa.token(serde_json::json!({
        "iss": ISS_RSA, "sub": "bob", "aud": [aud], "exp": exp, "groups": "admins",
        "scope": "read", "org": {"team": "red"}
    }));
    let ec_user = ec.token(serde_json::json!({
        "iss": ISS_EC, "sub": "carol", "exp": exp, "scope": "write",
        "aud": "https://api.example", "level": 3, "org": {"team": "blue"}
    }));
    let expired = rsa.token(
        serde_json::json!({"iss": ISS_RSA, "sub": "alice", "aud": aud, "exp": now() - 3600}),
    );
    let early = rsa.token(
        serde_json::json!({"iss": ISS_RSA, "sub": "alice", "aud": aud, "nbf": now() + 3600}),
    );
    let wrong_aud =
        rsa.token(serde_json::json!({"iss": ISS_RSA, "sub": "alice", "aud": "other", "exp": exp}));
    let unknown_iss = ec.token(serde_json::json!({"iss": "https://nobody.example", "sub": "x"}));
    let forged = stranger.token(
        serde_json::json!({"iss": ISS_EC, "sub": "carol", "exp": exp, "aud": "https://api.example"}),
    );
    let cases: Vec<Case> = vec![
        ("no token, public", "GET", "/public".into(), vec![]),
        ("no token, read", "GET", "/read".into(), vec![]),
        (
            "alice reads",
            "GET",
            "/read?x=1".into(),
            vec![bearer(alice.clone())],
        ),
        (
            "alice admin",
            "GET",
            "/admin".into(),
            vec![bearer(alice.clone())],
        ),
        (
            "bob admin",
            "GET",
            "/admin".into(),
            vec![bearer(bob.clone())],
        ),
        (
            "alice writes (scope split)",
            "POST",
            "/write".into(),
            vec![bearer(alice.clone())],
        ),
        (
            "bob writes",
            "POST",
            "/write".into(),
            vec![bearer(bob.clone())],
        ),
        (
            "ec writes (string scope)",
            "POST",
            "/write".into(),
            vec![bearer(ec_user.clone())],
        ),
        (
            "nested claim",
            "GET",
            "/team".into(),
            vec![bearer(alice.clone())],
        ),
        (
            "nested claim other team",
            "GET",
            "/team".into(),
            vec![bearer(bob.clone())],
        ),
        (
            "authenticated public",
            "GET",
            "/public".into(),
            vec![bearer(alice.clone())],
        ),
        (
            "expired",
            "GET",
            "/read".into(),
            vec![bearer(expired.clone())],
        ),
        ("not yet valid", "GET", "/read".into(), vec![bearer(early)]),
        (
            "wrong audience",
            "GET",
            "/read".into(),
            vec![bearer(wrong_aud)],
        ),
        (
            "unknown issuer",
            "GET",
            "/read".into(),
            vec![bearer(unknown_iss.clone())],
        ),
        (
            "forged signature",
            "GET",
            "/read".into(),
            vec![bearer(forged.clone())],
        ),
        (
            "not a jwt",
            "GET",
            "/read".into(),
            vec![bearer("abc".into())],
        ),
        (
            "bad base64",
            "GET",
            "/read".into(),
            vec![bearer("a!.b.c".into())],
        ),
        (
            "lowercase bearer",
            "GET",
            "/read".into(),
            vec![("authorization", format!("bearer {alice}"))],
        ),
        (
            "token in query",
            "GET",
            format!("/read?access_token={alice}&y=2"),
            vec![],
        ),
        (
            "cors preflight",
            "OPTIONS",
            "/read".into(),
            vec![
                ("origin", "https://ui.example".into()),
                ("access-control-request-method", "GET".into()),
                bearer(expired.clone()),
            ],
        ),
    ];
    let mut diff = Differences::default();
    for (name, method, path, headers) in &cases {
        diff.check(
            format!("istio: {name}"),
            ask(&theirs, &up_theirs, "istio", method, path, headers).await,
            ask(&ours, &up_ours, "istio", method, path, headers).await,
        );
    }
    let x_token = |t: &str| ("x-token", format!("Token {t}"));
    let generic: Vec<Case> = vec![
        ("missing", "GET", "/".into(), vec![]),
        ("remote key", "GET", "/".into(), vec![x_token(&ec_user)]),
        (
            "client's own payload header is replaced",
            "GET",
            "/".into(),
            vec![x_token(&ec_user), ("x-jwt-payload", "forged".into())],
        ),
        (
            "bearer is not this provider's location",
            "GET",
            "/".into(),
            vec![bearer(ec_user.clone())],
        ),
        ("param location", "GET", format!("/p?jwt={ec_user}"), vec![]),
        (
            "audience override",
            "GET",
            "/aud".into(),
            vec![x_token(&ec_user)],
        ),
        (
            "async-fetched keys",
            "GET",
            "/async".into(),
            vec![("x-prefetched", ec_user.clone())],
        ),
        (
            "async-fetched keys, forged",
            "GET",
            "/async".into(),
            vec![("x-prefetched", forged.clone())],
        ),
        (
            "either: local",
            "GET",
            "/either".into(),
            vec![bearer(alice.clone())],
        ),
        (
            "either: remote",
            "GET",
            "/either".into(),
            vec![x_token(&ec_user)],
        ),
        ("either: neither", "GET", "/either".into(), vec![]),
        (
            "either: expired",
            "GET",
            "/either".into(),
            vec![bearer(expired.clone())],
        ),
        ("both: one", "GET", "/both".into(), vec![x_token(&ec_user)]),
        (
            "both: both",
            "GET",
            "/both".into(),
            vec![x_token(&ec_user), bearer(alice.clone())],
        ),
        ("unknown requirement_name", "GET", "/nosuch".into(), vec![]),
        (
            "disabled route",
            "GET",
            "/off".into(),
            vec![bearer("garbage".into())],
        ),
        (
            "rule without requires",
            "GET",
            "/open".into(),
            vec![bearer("garbage".into())],
        ),
        (
            "lenient: bad token passes",
            "GET",
            "/lenient".into(),
            vec![bearer(expired.clone())],
        ),
        (
            "lenient: good token",
            "GET",
            "/lenient".into(),
            vec![bearer(alice.clone())],
        ),
        ("forged remote", "GET", "/".into(), vec![x_token(&forged)]),
    ];
    for (name, method, path, headers) in &generic {
        diff.check(
            format!("generic: {name}"),
            ask(&theirs, &up_theirs, "generic", method, path, headers).await,
            ask(&ours, &up_ours, "generic", method, path, headers).await,
        );
    }
    // Rotation: the remote set changes to a new key; once the 2 s cache has passed, the
    // new key's tokens pass and the old key's fail, on both proxies.
    let rotated = ec2.token(serde_json::json!({
        "iss": ISS_EC, "sub": "dave", "exp": exp, "aud": "api.example"
    }));
    jwks_server.set(Some(jwks(&[&ec2])));
    tokio::time::sleep(Duration::from_millis(2600)).await;
    for (name, token) in [("rotated key", &rotated), ("old key", &ec_user)] {
        diff.check(
            format!("after rotation: {name}"),
            ask(
                &theirs,
                &up_theirs,
                "generic",
                "GET",
                "/",
                &[x_token(token)],
            )
            .await,
            ask(&ours, &up_ours, "generic", "GET", "/", &[x_token(token)]).await,
        );
    }
    // The key server down once the cache has expired: the fetch fails.
    jwks_server.set(None);
    tokio::time::sleep(Duration::from_millis(2600)).await;
    diff.check(
        "key server down",
        ask(
            &theirs,
            &up_theirs,
            "generic",
            "GET",
            "/",
            &[x_token(&rotated)],
        )
        .await,
        ask(&ours, &up_ours, "generic", "GET", "/", &[x_token(&rotated)]).await,
    );
    for stat in [
        "http.inbound_0.0.0.0_8080.jwt_authn.allowed",
        "http.inbound_0.0.0.0_8080.jwt_authn.denied",
        "http.inbound_0.0.0.0_8080.jwt_authn.cors_preflight_bypassed",
        "http.inbound_0.0.0.0_8080.rbac.allowed",
        "http.inbound_0.0.0.0_8080.rbac.denied",
        "http.generic.jwt_authn.allowed",
        "http.generic.jwt_authn.denied",
    ] {
        diff.check(stat, theirs.stat(stat).await, ours.stat(stat).await);
    }
    // Envoy fetches per worker; both fetched, and both counted the failure.
    assert!(ours.stat("http.generic.jwt_authn.jwks_fetch_success").await >= Some(2));
    assert!(ours.stat("http.generic.jwt_authn.jwks_fetch_failed").await >= Some(1));
    diff.assert_none();
    // Not a vacuous agreement.
    for (token, want) in [
        (&alice, "200"),
        (&bob, "403 RBAC: access denied"),
        (&expired, "401 Jwt is expired"),
    ] {
        let got = ask(
            &ours,
            &up_ours,
            "istio",
            "GET",
            "/admin",
            &[bearer(token.clone())],
        )
        .await;
        assert!(got.starts_with(want), "{got}");
    }
}
