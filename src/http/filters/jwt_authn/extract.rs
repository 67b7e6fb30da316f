//! Where tokens are found (`from_headers`, `from_params`, `from_cookies`; by default
//! `Authorization: Bearer …` and `access_token`) and how Envoy cuts them out.
use std::cmp::Ordering;

use http::{HeaderMap, HeaderName};

/// One place a token may be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    Header { name: HeaderName, prefix: String },
    Param(String),
    Cookie(String),
}

impl Location {
    fn key(&self) -> (u8, &str, &str) {
        match self {
            Location::Header { name, prefix } => (0, name.as_str(), prefix),
            Location::Param(p) => (1, p, ""),
            Location::Cookie(c) => (2, c, ""),
        }
    }

    /// Envoy's locations when a provider names none.
    pub fn defaults() -> Vec<Location> {
        vec![
            Location::Header {
                name: http::header::AUTHORIZATION,
                prefix: "Bearer ".into(),
            },
            Location::Param("access_token".into()),
        ]
    }
}

/// Envoy visits header locations, then parameters, then cookies, each in name order.
impl Ord for Location {
    fn cmp(&self, other: &Self) -> Ordering {
        self.key().cmp(&other.key())
    }
}

impl PartialOrd for Location {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// A token found, and where.
#[derive(Debug, Clone)]
pub struct Token {
    pub value: String,
    pub location: Location,
}

/// Every token at `locations` (headers in `removed` are gone already).
pub fn tokens(
    locations: &[&Location],
    headers: &HeaderMap,
    path: &str,
    removed: &[HeaderName],
) -> Vec<Token> {
    let query = path.split_once('?').map(|(_, q)| q);
    let mut out = Vec::new();
    for loc in locations {
        match loc {
            Location::Header { name, prefix } => {
                if removed.contains(name) {
                    continue;
                }
                for v in headers.get_all(name) {
                    let Ok(v) = v.to_str() else { continue };
                    if let Some(t) = from_header_value(v, prefix) {
                        out.push(Token {
                            value: t.to_owned(),
                            location: (*loc).clone(),
                        });
                    }
                }
            }
            Location::Param(name) => {
                let found = query.and_then(|q| {
                    q.split('&').find_map(|kv| {
                        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                        (percent_decode(k) == *name).then(|| percent_decode(v))
                    })
                });
                if let Some(t) = found.filter(|t| !t.is_empty()) {
                    out.push(Token {
                        value: t,
                        location: (*loc).clone(),
                    });
                }
            }
            Location::Cookie(name) => {
                let found = headers
                    .get_all(http::header::COOKIE)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .flat_map(|v| v.split(';'))
                    .find_map(|c| {
                        let (k, v) = c.trim().split_once('=')?;
                        (k == name).then(|| v.trim_matches('"').to_owned())
                    });
                if let Some(t) = found.filter(|t| !t.is_empty()) {
                    out.push(Token {
                        value: t,
                        location: (*loc).clone(),
                    });
                }
            }
        }
    }
    out
}

/// The token in one header value: after `prefix` (found anywhere in the value), from
/// the first base64url or `.` character to the end; the whole value without a prefix.
fn from_header_value<'v>(v: &'v str, prefix: &str) -> Option<&'v str> {
    if prefix.is_empty() {
        return Some(v);
    }
    let at = v.find(prefix)?;
    let rest = &v[at + prefix.len()..];
    match rest.find(|c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) {
        Some(i) => Some(&rest[i..]),
        None => Some(v),
    }
}

/// `%XX` decoded (and `+` left alone, as Envoy leaves it).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push(h * 16 + l);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

/// `path` without the query parameters named in `names` (tokens not forwarded).
pub fn strip_params(path: &str, names: &[String]) -> String {
    let Some((p, q)) = path.split_once('?') else {
        return path.to_owned();
    };
    let kept: Vec<&str> = q
        .split('&')
        .filter(|kv| {
            let k = kv.split_once('=').map_or(*kv, |(k, _)| k);
            !names.iter().any(|n| percent_decode(k) == *n)
        })
        .collect();
    if kept.is_empty() {
        p.to_owned()
    } else {
        format!("{p}?{}", kept.join("&"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_tokens_are_cut_as_envoy_cuts_them() {
        assert_eq!(from_header_value("Bearer a.b.c", "Bearer "), Some("a.b.c"));
        assert_eq!(
            from_header_value("x Bearer  a.b.c junk", "Bearer "),
            Some("a.b.c junk")
        );
        assert_eq!(from_header_value("bearer a.b.c", "Bearer "), None);
        assert_eq!(from_header_value("Bearer ;;", "Bearer "), Some("Bearer ;;"));
        assert_eq!(from_header_value("a.b.c", ""), Some("a.b.c"));
    }

    #[test]
    fn finds_tokens_in_headers_params_and_cookies() {
        let mut h = HeaderMap::new();
        h.append("authorization", "Bearer one".parse().unwrap());
        h.append("cookie", "x=1; jwt=three".parse().unwrap());
        let locs = [
            Location::Header {
                name: http::header::AUTHORIZATION,
                prefix: "Bearer ".into(),
            },
            Location::Param("access_token".into()),
            Location::Cookie("jwt".into()),
        ];
        let refs: Vec<&Location> = locs.iter().collect();
        let t = tokens(&refs, &h, "/p?a=1&access_token=t%2Ewo", &[]);
        let values: Vec<&str> = t.iter().map(|t| t.value.as_str()).collect();
        assert_eq!(values, ["one", "t.wo", "three"]);
        let t = tokens(&refs, &h, "/p", &[http::header::AUTHORIZATION]);
        assert_eq!(t.len(), 1);
        assert_eq!(
            strip_params("/p?a=1&access_token=x&b", &["access_token".into()]),
            "/p?a=1&b"
        );
        assert_eq!(
            strip_params("/p?access_token=x", &["access_token".into()]),
            "/p"
        );
    }
}
