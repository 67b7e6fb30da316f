//! The route's rewrites of the upstream request: `prefix_rewrite` and `regex_rewrite` on
//! the path (the query string is kept), `host_rewrite_literal` on the authority.
use crate::config::{PathMatch, PathRewrite};

/// The rewritten `path?query`.
/// `prefix_rewrite` replaces what the route's prefix (or whole-path, or regex) match
/// matched.
pub fn path(rewrite: &PathRewrite, matched: &PathMatch, path_and_query: &str) -> String {
    match rewrite {
        PathRewrite::Prefix(new) => {
            let len = match matched {
                PathMatch::Prefix(p) | PathMatch::Path(p) | PathMatch::SeparatedPrefix(p) => {
                    p.len()
                }
                // A regex route matched the whole path: all of it is replaced.
                PathMatch::Regex(_) => path_and_query.find('?').unwrap_or(path_and_query.len()),
            };
            let rest = path_and_query.get(len..).unwrap_or("");
            format!("{new}{rest}")
        }
        PathRewrite::Regex {
            pattern,
            substitution,
        } => {
            let (path, query) = match path_and_query.split_once('?') {
                Some((p, q)) => (p, Some(q)),
                None => (path_and_query, None),
            };
            let mut out = pattern
                .replace_all(path, substitution.as_str())
                .into_owned();
            if let Some(q) = query {
                out.push('?');
                out.push_str(q);
            }
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use regex::Regex;

    use super::*;

    #[test]
    fn prefix_rewrites() {
        let p = |s: &str| PathRewrite::Prefix(s.into());
        let cases = [
            (
                p("/"),
                PathMatch::Prefix("/v1/".into()),
                "/v1/users?id=1",
                "/users?id=1",
            ),
            (
                p("/"),
                PathMatch::Prefix("/v1".into()),
                "/v1/users",
                "//users",
            ),
            (
                p(""),
                PathMatch::Prefix("/v1".into()),
                "/v1/users",
                "/users",
            ),
            (p("/v2"), PathMatch::Prefix("/v1".into()), "/v1", "/v2"),
            (
                p("/new"),
                PathMatch::Path("/old".into()),
                "/old?q",
                "/new?q",
            ),
            (
                p("/b"),
                PathMatch::SeparatedPrefix("/a".into()),
                "/a/x",
                "/b/x",
            ),
            (p("/x/"), PathMatch::Prefix("/V1/".into()), "/v1/y", "/x/y"),
            (
                p("/new"),
                PathMatch::Regex(Regex::new("^/re/[a-z]+$").unwrap()),
                "/re/abc?z=1",
                "/new?z=1",
            ),
        ];
        for (rw, m, input, want) in cases {
            assert_eq!(path(&rw, &m, input), want, "{rw:?} {m:?} {input}");
        }
    }

    #[test]
    fn regex_rewrites_keep_the_query() {
        let rw = PathRewrite::Regex {
            pattern: Regex::new("^/service/([^/]+)(/.*)$").unwrap(),
            substitution: "${2}/instance/${1}".into(),
        };
        let m = PathMatch::Prefix("/".into());
        assert_eq!(
            path(&rw, &m, "/service/foo/v1/api?x=1"),
            "/v1/api/instance/foo?x=1"
        );
        let all = PathRewrite::Regex {
            pattern: Regex::new("o").unwrap(),
            substitution: "0".into(),
        };
        assert_eq!(path(&all, &m, "/foo/boo?o=o"), "/f00/b00?o=o");
    }
}
