//! Envoy's request matchers as routes use them: string matchers
//! (`envoy.type.matcher.v3.StringMatcher`), header matchers (`HeaderMatcher`, incl.
//! pseudo-headers) and query-parameter matchers, with Envoy's rules for missing headers,
//! repeated headers and inversion (checked against Envoy 1.40 by `tests/envoy_routing.rs`).
use http::HeaderMap;
use regex::Regex;

/// A compiled `StringMatcher`. Regexes match the whole value, as RE2's FullMatch in Envoy.
#[derive(Debug, Clone)]
pub enum StringMatch {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Contains(String),
    Regex(Regex),
}

#[derive(Debug, Clone)]
pub struct StringMatcher {
    pub kind: StringMatch,
    /// Ignored for regexes (Envoy rejects `ignore_case` with `safe_regex`).
    pub ignore_case: bool,
}

impl StringMatcher {
    pub fn matches(&self, value: &str) -> bool {
        if self.ignore_case {
            let v = value.to_ascii_lowercase();
            return match &self.kind {
                // The pattern was lowered at compile time.
                StringMatch::Exact(p) => v == *p,
                StringMatch::Prefix(p) => v.starts_with(p.as_str()),
                StringMatch::Suffix(p) => v.ends_with(p.as_str()),
                StringMatch::Contains(p) => v.contains(p.as_str()),
                StringMatch::Regex(r) => r.is_match(value),
            };
        }
        match &self.kind {
            StringMatch::Exact(p) => value == p,
            StringMatch::Prefix(p) => value.starts_with(p.as_str()),
            StringMatch::Suffix(p) => value.ends_with(p.as_str()),
            StringMatch::Contains(p) => value.contains(p.as_str()),
            StringMatch::Regex(r) => r.is_match(value),
        }
    }
}

/// Compiles a regex with RE2's full-match meaning (`^(?:…)$`).
pub fn full_match_regex(pattern: &str) -> Result<Regex, String> {
    Regex::new(&format!("^(?:{pattern})$")).map_err(|e| format!("invalid regex '{pattern}': {e}"))
}

#[derive(Debug, Clone)]
pub enum HeaderMatch {
    /// `string_match` (and the deprecated `exact_match`/`prefix_match`/… forms).
    String(StringMatcher),
    /// `range_match`: the value parses as an integer in `[start, end)`.
    Range { start: i64, end: i64 },
    /// `present_match`: true when present, false when absent.
    Present(bool),
    /// No specifier: matches when the header is present.
    Any,
}

/// A compiled `HeaderMatcher`. Names are lowercase; `:method`, `:path`, `:authority`
/// and `:scheme` read the request line.
#[derive(Debug, Clone)]
pub struct HeaderMatcher {
    pub name: String,
    pub kind: HeaderMatch,
    pub invert: bool,
    pub treat_missing_as_empty: bool,
}

/// What header matchers see of a request.
pub struct RequestHead<'a> {
    pub method: &'a str,
    pub scheme: &'a str,
    pub authority: &'a str,
    /// The path with its query string, as `:path`.
    pub path_and_query: &'a str,
    pub headers: &'a HeaderMap,
}

impl RequestHead<'_> {
    /// The values of a header (one for pseudo-headers); `None` when absent.
    fn values(&self, name: &str) -> Option<Vec<&str>> {
        match name {
            ":method" => return Some(vec![self.method]),
            ":path" => return Some(vec![self.path_and_query]),
            ":authority" | "host" => return Some(vec![self.authority]),
            ":scheme" => return Some(vec![self.scheme]),
            _ => {}
        }
        let values: Vec<&str> = self
            .headers
            .get_all(name)
            .iter()
            // Envoy's header map holds bytes; a non-UTF-8 value matches nothing textual.
            .map(|v| v.to_str().unwrap_or("\u{fffd}"))
            .collect();
        (!values.is_empty()).then_some(values)
    }
}

impl HeaderMatcher {
    /// Envoy 1.40 matches a repeated header value by value, not joined with commas (the
    /// joined form let `x-role: user` + `x-role: admin` slip past matchers): the matcher
    /// holds when any value matches, and `invert_match` inverts that.
    pub fn matches(&self, req: &RequestHead<'_>) -> bool {
        let values = match (req.values(&self.name), self.treat_missing_as_empty) {
            (Some(v), _) => v,
            (None, true) => vec![""],
            // A missing header fails every matcher except `present_match: false`, and
            // inverting does not turn that into a match, except for `present_match: true`.
            (None, false) => {
                return matches!(self.kind, HeaderMatch::Present(p) if p == self.invert);
            }
        };
        let matched = values.iter().any(|value| match &self.kind {
            HeaderMatch::String(s) => s.matches(value),
            HeaderMatch::Range { start, end } => {
                value.parse::<i64>().is_ok_and(|n| n >= *start && n < *end)
            }
            HeaderMatch::Present(p) => *p,
            HeaderMatch::Any => true,
        });
        matched != self.invert
    }
}

/// A compiled `QueryParameterMatcher`, on the first value of the named parameter (not
/// percent-decoded).
#[derive(Debug, Clone)]
pub struct QueryParameterMatcher {
    pub name: String,
    pub kind: QueryMatch,
}

#[derive(Debug, Clone)]
pub enum QueryMatch {
    /// `present_match: true`, or no specifier.
    Present,
    /// `present_match: false`: the parameter is absent.
    Absent,
    Value(StringMatcher),
}

impl QueryParameterMatcher {
    pub fn matches(&self, query: Option<&str>) -> bool {
        let found = query.and_then(|query| {
            query.split('&').find_map(|pair| {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                (k == self.name).then_some(v)
            })
        });
        match (found, &self.kind) {
            (None, kind) => matches!(kind, QueryMatch::Absent),
            (Some(_), QueryMatch::Present) => true,
            (Some(_), QueryMatch::Absent) => false,
            (Some(v), QueryMatch::Value(m)) => m.matches(v),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(kind: StringMatch, ignore_case: bool) -> StringMatcher {
        StringMatcher { kind, ignore_case }
    }

    fn head<'a>(headers: &'a HeaderMap) -> RequestHead<'a> {
        RequestHead {
            method: "GET",
            scheme: "http",
            authority: "svc:9080",
            path_and_query: "/a/b?x=1",
            headers,
        }
    }

    fn hm(name: &str, kind: HeaderMatch, invert: bool, missing_empty: bool) -> HeaderMatcher {
        HeaderMatcher {
            name: name.into(),
            kind,
            invert,
            treat_missing_as_empty: missing_empty,
        }
    }

    #[test]
    fn string_matchers() {
        use StringMatch::*;
        let re = |p| Regex(full_match_regex(p).unwrap());
        let cases: &[(StringMatcher, &str, bool)] = &[
            (s(Exact("canary".into()), false), "canary", true),
            (s(Exact("canary".into()), false), "Canary", false),
            (s(Exact("canary".into()), true), "CANARY", true),
            (s(Prefix("ab".into()), false), "abc", true),
            (s(Prefix("ab".into()), false), "xab", false),
            (s(Suffix("bc".into()), false), "abc", true),
            (s(Suffix("bc".into()), true), "ABC", true),
            (s(Contains("b".into()), false), "abc", true),
            (s(Contains("z".into()), false), "abc", false),
            (s(re("a.c"), false), "abc", true),
            // Full match, not a search.
            (s(re("b"), false), "abc", false),
            (s(re("a|abc"), false), "abc", true),
        ];
        for (i, (m, v, want)) in cases.iter().enumerate() {
            assert_eq!(m.matches(v), *want, "case {i}: {m:?} on {v:?}");
        }
    }

    #[test]
    fn header_matchers_follow_envoy_for_missing_and_inverted() {
        let mut h = HeaderMap::new();
        h.insert("x-user", "jason".parse().unwrap());
        h.append("x-multi", "a".parse().unwrap());
        h.append("x-multi", "b".parse().unwrap());
        h.insert("x-num", "42".parse().unwrap());
        let exact = |v: &str| HeaderMatch::String(s(StringMatch::Exact(v.into()), false));
        let req = head(&h);
        let cases: Vec<(HeaderMatcher, bool)> = vec![
            (hm("x-user", exact("jason"), false, false), true),
            (hm("x-user", exact("jason"), true, false), false),
            (hm("x-user", exact("bob"), true, false), true),
            // Missing header: no match, inverted or not...
            (hm("x-none", exact("a"), false, false), false),
            (hm("x-none", exact("a"), true, false), false),
            // ...unless treated as empty.
            (hm("x-none", exact(""), false, true), true),
            (hm("x-none", exact("a"), true, true), true),
            (
                hm("x-none", HeaderMatch::Present(false), false, false),
                true,
            ),
            (
                hm("x-none", HeaderMatch::Present(true), false, false),
                false,
            ),
            (hm("x-none", HeaderMatch::Present(true), true, false), true),
            (hm("x-user", HeaderMatch::Present(true), false, false), true),
            (
                hm("x-user", HeaderMatch::Present(false), false, false),
                false,
            ),
            (hm("x-user", HeaderMatch::Any, false, false), true),
            (hm("x-none", HeaderMatch::Any, false, false), false),
            // Repeated headers match value by value, never joined.
            (hm("x-multi", exact("a,b"), false, false), false),
            (hm("x-multi", exact("b"), false, false), true),
            (hm("x-multi", exact("a"), true, false), false),
            (hm("x-multi", exact("c"), true, false), true),
            (
                hm(
                    "x-num",
                    HeaderMatch::Range { start: 40, end: 43 },
                    false,
                    false,
                ),
                true,
            ),
            (
                hm(
                    "x-num",
                    HeaderMatch::Range { start: 0, end: 42 },
                    false,
                    false,
                ),
                false,
            ),
            (
                hm(
                    "x-user",
                    HeaderMatch::Range { start: 0, end: 42 },
                    false,
                    false,
                ),
                false,
            ),
            (hm(":method", exact("GET"), false, false), true),
            (hm(":authority", exact("svc:9080"), false, false), true),
            (hm(":path", exact("/a/b?x=1"), false, false), true),
            (hm(":scheme", exact("http"), false, false), true),
        ];
        for (i, (m, want)) in cases.iter().enumerate() {
            assert_eq!(m.matches(&req), *want, "case {i}: {m:?}");
        }
    }

    #[test]
    fn query_parameter_matchers() {
        let qm = |name: &str, kind: QueryMatch| QueryParameterMatcher {
            name: name.into(),
            kind,
        };
        let exact = |v: &str| QueryMatch::Value(s(StringMatch::Exact(v.into()), false));
        assert!(qm("debug", QueryMatch::Present).matches(Some("a=1&debug")));
        assert!(qm("debug", QueryMatch::Present).matches(Some("debug=")));
        assert!(!qm("debug", QueryMatch::Present).matches(Some("debugx=1")));
        assert!(!qm("debug", QueryMatch::Present).matches(None));
        assert!(qm("debug", QueryMatch::Absent).matches(None));
        assert!(qm("debug", QueryMatch::Absent).matches(Some("x=1")));
        assert!(!qm("debug", QueryMatch::Absent).matches(Some("debug")));
        assert!(qm("v", exact("2")).matches(Some("v=2&v=3")));
        assert!(!qm("v", exact("3")).matches(Some("v=2&v=3")));
        assert!(!qm("v", exact("a b")).matches(Some("v=a%20b")));
    }
}
