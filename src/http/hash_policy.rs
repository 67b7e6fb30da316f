//! A route's `hash_policy`: the request's key for consistent hashing (ring hash,
//! Maglev), computed as Envoy computes it: xxHash64 of a header's values (sorted, so
//! their order does not matter), a cookie, the client's IP or a query parameter; several
//! rules combine by rotating the running hash and XORing the next; a `terminal` rule that
//! produced a hash ends the list. A cookie rule with a `ttl` makes the cookie when the
//! request has none, so the client sticks from then on.
use std::{net::SocketAddr, time::Duration};

use http::{HeaderMap, HeaderValue, Uri, header};
use xxhash_rust::xxh64::{Xxh64, xxh64};

#[derive(Debug, Clone)]
pub struct HashPolicy {
    pub rules: Vec<Rule>,
}

#[derive(Debug, Clone)]
pub struct Rule {
    pub key: Key,
    pub terminal: bool,
}

#[derive(Debug, Clone)]
pub enum Key {
    /// A header (or `:authority`, `:path`, `:method`, `:scheme`), optionally rewritten.
    Header {
        name: String,
        rewrite: Option<(regex::Regex, String)>,
    },
    Cookie(CookieRule),
    SourceIp,
    QueryParameter(String),
    /// pilotfish keeps no filter state: the rule never yields a hash (as in Envoy when
    /// the key is absent).
    FilterState,
}

#[derive(Debug, Clone)]
pub struct CookieRule {
    pub name: String,
    /// With a TTL, a missing cookie is made (`0s`: a session cookie).
    pub ttl: Option<Duration>,
    pub path: String,
    pub attributes: Vec<(String, String)>,
}

/// What the hash is computed from.
pub struct Request<'a> {
    pub headers: &'a HeaderMap,
    pub uri: &'a Uri,
    pub method: &'a http::Method,
    pub peer: SocketAddr,
    pub local: SocketAddr,
}

/// The request's hash, and the `set-cookie` to add to the response when a cookie was
/// made.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Hashed {
    pub hash: Option<u64>,
    pub set_cookie: Option<HeaderValue>,
}

impl HashPolicy {
    pub fn compute(&self, req: &Request<'_>) -> Hashed {
        let mut out = Hashed::default();
        for rule in &self.rules {
            let next = match &rule.key {
                Key::Header { name, rewrite } => header_hash(req, name, rewrite.as_ref()),
                Key::Cookie(c) => match cookie(req.headers, &c.name) {
                    Some(v) => Some(xxh64(v.as_bytes(), 0)),
                    None => c.ttl.map(|ttl| {
                        let (hash, set) = make_cookie(c, ttl, req.peer, req.local);
                        out.set_cookie = Some(set);
                        hash
                    }),
                },
                Key::SourceIp => Some(xxh64(req.peer.ip().to_string().as_bytes(), 0)),
                Key::QueryParameter(name) => query(req.uri, name).map(|v| xxh64(v.as_bytes(), 0)),
                Key::FilterState => None,
            };
            if let Some(n) = next {
                out.hash = Some(out.hash.map_or(0, |h| h.rotate_left(1)) ^ n);
            }
            if rule.terminal && out.hash.is_some() {
                break;
            }
        }
        out
    }
}

fn header_hash(
    req: &Request<'_>,
    name: &str,
    rewrite: Option<&(regex::Regex, String)>,
) -> Option<u64> {
    let mut values: Vec<String> = match name {
        ":authority" => req
            .uri
            .authority()
            .map(|a| a.as_str().to_owned())
            .or_else(|| {
                req.headers
                    .get(header::HOST)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            })
            .into_iter()
            .collect(),
        ":path" => req
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .into_iter()
            .collect(),
        ":method" => vec![req.method.as_str().to_owned()],
        ":scheme" => req
            .uri
            .scheme_str()
            .map(str::to_owned)
            .into_iter()
            .collect(),
        _ => req
            .headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect(),
    };
    if values.is_empty() {
        return None;
    }
    if let Some((re, sub)) = rewrite {
        for v in &mut values {
            *v = re.replace_all(v, sub.as_str()).into_owned();
        }
    }
    values.sort_unstable();
    let mut h = Xxh64::new(0);
    for v in &values {
        h.update(v.as_bytes());
    }
    Some(h.digest())
}

/// The value of cookie `name` in the request's `cookie` headers.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|kv| {
            let (k, v) = kv.trim().split_once('=')?;
            (k == name).then(|| v.trim_matches('"'))
        })
}

fn query<'a>(uri: &'a Uri, name: &str) -> Option<&'a str> {
    uri.query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == name).then_some(v)
    })
}

/// Envoy's made cookie: its value is the hex xxHash64 of the connection's addresses
/// (so streams of one connection agree), and the request hashes by that value.
fn make_cookie(
    c: &CookieRule,
    ttl: Duration,
    peer: SocketAddr,
    local: SocketAddr,
) -> (u64, HeaderValue) {
    let value = format!("{:016x}", xxh64(format!("{peer}{local}").as_bytes(), 0));
    let mut set = format!("{}=\"{value}\"", c.name);
    // Whole seconds; under one second Envoy leaves Max-Age out (a session cookie).
    if ttl.as_secs() > 0 {
        set.push_str(&format!("; Max-Age={}", ttl.as_secs()));
    }
    if !c.path.is_empty() {
        set.push_str(&format!("; Path={}", c.path));
    }
    for (k, v) in &c.attributes {
        if v.is_empty() {
            set.push_str(&format!("; {k}"));
        } else {
            set.push_str(&format!("; {k}={v}"));
        }
    }
    set.push_str("; HttpOnly");
    let header = HeaderValue::from_str(&set).unwrap_or_else(|_| HeaderValue::from_static(""));
    (xxh64(value.as_bytes(), 0), header)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req<'a>(headers: &'a HeaderMap, uri: &'a Uri) -> Request<'a> {
        Request {
            headers,
            uri,
            method: &http::Method::GET,
            peer: "10.0.0.1:5555".parse().unwrap(),
            local: "10.0.0.2:80".parse().unwrap(),
        }
    }

    fn header_rule(name: &str, terminal: bool) -> Rule {
        Rule {
            key: Key::Header {
                name: name.into(),
                rewrite: None,
            },
            terminal,
        }
    }

    #[test]
    fn header_values_hash_regardless_of_order() {
        let uri: Uri = "/".parse().unwrap();
        let p = HashPolicy {
            rules: vec![header_rule("x-user", false)],
        };
        let mut a = HeaderMap::new();
        a.append("x-user", "alice".parse().unwrap());
        a.append("x-user", "bob".parse().unwrap());
        let mut b = HeaderMap::new();
        b.append("x-user", "bob".parse().unwrap());
        b.append("x-user", "alice".parse().unwrap());
        let ha = p.compute(&req(&a, &uri)).hash;
        assert_eq!(ha, p.compute(&req(&b, &uri)).hash);
        assert_eq!(ha, Some(xxh64(b"alicebob", 0)));
        assert_eq!(p.compute(&req(&HeaderMap::new(), &uri)).hash, None);
    }

    #[test]
    fn rules_combine_and_terminal_stops() {
        let uri: Uri = "/?k=v".parse().unwrap();
        let mut h = HeaderMap::new();
        h.insert("a", "1".parse().unwrap());
        h.insert("b", "2".parse().unwrap());
        let both = HashPolicy {
            rules: vec![header_rule("a", false), header_rule("b", false)],
        };
        let want = xxh64(b"1", 0).rotate_left(1) ^ xxh64(b"2", 0);
        assert_eq!(both.compute(&req(&h, &uri)).hash, Some(want));
        let stop = HashPolicy {
            rules: vec![header_rule("a", true), header_rule("b", false)],
        };
        assert_eq!(stop.compute(&req(&h, &uri)).hash, Some(xxh64(b"1", 0)));
        let q = HashPolicy {
            rules: vec![Rule {
                key: Key::QueryParameter("k".into()),
                terminal: false,
            }],
        };
        assert_eq!(q.compute(&req(&h, &uri)).hash, Some(xxh64(b"v", 0)));
    }

    #[test]
    fn a_missing_cookie_is_made_when_it_has_a_ttl() {
        let uri: Uri = "/".parse().unwrap();
        let rule = |ttl| HashPolicy {
            rules: vec![Rule {
                key: Key::Cookie(CookieRule {
                    name: "sticky".into(),
                    ttl,
                    path: "/p".into(),
                    attributes: vec![("SameSite".into(), "Lax".into())],
                }),
                terminal: false,
            }],
        };
        let none = HeaderMap::new();
        let made = rule(Some(Duration::from_secs(60))).compute(&req(&none, &uri));
        let set = made.set_cookie.unwrap();
        let set = set.to_str().unwrap();
        assert!(set.starts_with("sticky=\""), "{set}");
        assert!(
            set.ends_with("\"; Max-Age=60; Path=/p; SameSite=Lax; HttpOnly"),
            "{set}"
        );
        // The client sends it back: same hash, no new cookie.
        let value = set.split('"').nth(1).unwrap();
        let mut back = HeaderMap::new();
        back.insert(
            header::COOKIE,
            format!("other=1; sticky={value}").parse().unwrap(),
        );
        let again = rule(Some(Duration::from_secs(60))).compute(&req(&back, &uri));
        assert_eq!(again.hash, made.hash);
        assert!(again.set_cookie.is_none());
        // Without a TTL nothing is made.
        assert_eq!(rule(None).compute(&req(&none, &uri)), Hashed::default());
    }
}
