//! The connection manager's path normalization, as Envoy applies it before routing:
//! `normalize_path` (RFC 3986 dot-segment removal, `\` as `/`, percent-encoded
//! unreserved characters decoded, other escapes kept) and `merge_slashes`. The
//! query string is left alone.

/// The normalized `path?query`, or `None` when nothing changes.
pub fn normalize(path_and_query: &str, normalize: bool, merge_slashes: bool) -> Option<String> {
    let (path, query) = match path_and_query.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path_and_query, None),
    };
    let mut out = if normalize {
        remove_dot_segments(&decode_unreserved(&path.replace('\\', "/")))
    } else {
        path.to_owned()
    };
    if merge_slashes {
        out = merge(&out);
    }
    if out == path {
        return None;
    }
    Some(match query {
        Some(q) => format!("{out}?{q}"),
        None => out,
    })
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Decodes `%XX` escapes of unreserved characters and keeps the others as they are.
fn decode_unreserved(path: &str) -> String {
    let b = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && b[i + 1].is_ascii_hexdigit()
            && b[i + 2].is_ascii_hexdigit()
        {
            let hex = &path[i + 1..i + 3];
            let byte = u8::from_str_radix(hex, 16).unwrap_or(0);
            if is_unreserved(byte) {
                out.push(byte as char);
            } else {
                out.push('%');
                out.push_str(hex);
            }
            i += 3;
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    out
}

/// RFC 3986 §5.2.4 on an absolute path; `..` above the root stays at the root.
fn remove_dot_segments(path: &str) -> String {
    let mut segments: Vec<&str> = Vec::new();
    let parts: Vec<&str> = path.split('/').skip(1).collect();
    let last = parts.len().saturating_sub(1);
    for (i, seg) in parts.iter().enumerate() {
        match *seg {
            "." => {
                if i == last {
                    segments.push("");
                }
            }
            ".." => {
                segments.pop();
                if i == last {
                    segments.push("");
                }
            }
            s => segments.push(s),
        }
    }
    format!("/{}", segments.join("/"))
}

fn merge(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for c in path.chars() {
        if c == '/' && out.ends_with('/') {
            continue;
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What Envoy 1.40 forwarded with `normalize_path` and `merge_slashes` on.
    #[test]
    fn as_envoy_normalizes() {
        let cases = [
            ("/a/./b/../c", "/a/c"),
            ("//x///y", "/x/y"),
            ("/%7Euser/%2e%2e/z", "/z"),
            ("/a/%2F/b", "/a/%2F/b"),
            ("/a/%2f/b", "/a/%2f/b"),
            ("/../../etc", "/etc"),
            ("/a\\b", "/a/b"),
            ("/p%41th", "/pAth"),
            ("/x?a=/../b", "/x?a=/../b"),
            ("/a/b/..", "/a/"),
            ("/a/.", "/a/"),
            ("/", "/"),
        ];
        for (input, want) in cases {
            let got = normalize(input, true, true).unwrap_or_else(|| input.to_owned());
            assert_eq!(got, want, "{input}");
        }
        assert_eq!(normalize("//a//b", false, true).as_deref(), Some("/a/b"));
        assert_eq!(normalize("//a/./b", false, true).as_deref(), Some("/a/./b"));
        assert_eq!(normalize("/a/b", true, true), None);
    }
}
