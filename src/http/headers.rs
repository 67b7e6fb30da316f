//! Header handling between downstream and upstream: hop-by-hop removal (RFC 9110 §7.6.1,
//! and what HTTP/2 forbids), and request ids.
use http::{HeaderMap, HeaderName, HeaderValue, header};

/// Names the proxy itself sets or reads on every request. Built once: a `&str` key is
/// parsed on every map operation, and a custom name built from it is a fresh allocation.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub const X_ENVOY_EXTERNAL_ADDRESS: HeaderName =
    HeaderName::from_static("x-envoy-external-address");
pub const X_ENVOY_EXPECTED_RQ_TIMEOUT_MS: HeaderName =
    HeaderName::from_static("x-envoy-expected-rq-timeout-ms");
pub const X_ENVOY_ORIGINAL_PATH: HeaderName = HeaderName::from_static("x-envoy-original-path");
pub const X_ENVOY_ATTEMPT_COUNT: HeaderName = HeaderName::from_static("x-envoy-attempt-count");
pub const X_ENVOY_OVERLOADED: HeaderName = HeaderName::from_static("x-envoy-overloaded");
pub const X_ENVOY_UPSTREAM_SERVICE_TIME: HeaderName =
    HeaderName::from_static("x-envoy-upstream-service-time");

const HOP_BY_HOP_COUNT: usize = 5;

/// Headers that describe one connection and are never forwarded, in the order
/// [`hop_by_hop_index`] numbers them.
const HOP_BY_HOP: [HeaderName; HOP_BY_HOP_COUNT] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Where `name` is in [`HOP_BY_HOP`]: one string match, cheaper than comparing names.
fn hop_by_hop_index(name: &str) -> Option<usize> {
    Some(match name {
        "connection" => 0,
        "keep-alive" => 1,
        "proxy-connection" => 2,
        "transfer-encoding" => 3,
        "upgrade" => 4,
        _ => return None,
    })
}

/// The header names a `connection` value nominates. `keep-alive` is in [`HOP_BY_HOP`]
/// already; `close` is a connection option, never a field (RFC 9110 §16.3.2.2).
fn nominated(connection: &str) -> impl Iterator<Item = &str> {
    connection.split(',').map(str::trim).filter(|n| {
        !n.is_empty() && !n.eq_ignore_ascii_case("keep-alive") && !n.eq_ignore_ascii_case("close")
    })
}

/// Removes hop-by-hop headers, including those the `connection` header names. `te` is
/// kept only as `te: trailers` (gRPC needs it).
pub fn strip_hop_by_hop(h: &mut HeaderMap) {
    // One pass over the names first: a removal costs a hash and a probe per name, and
    // most messages carry none of these but `connection`.
    let mut present = [false; HOP_BY_HOP_COUNT];
    let mut te = false;
    for name in h.keys() {
        let name = name.as_str();
        if let Some(i) = hop_by_hop_index(name) {
            present[i] = true;
        } else if name == "te" {
            te = true;
        }
    }
    // Usually `connection: keep-alive` or `close`, which nominate nothing to copy.
    if present[0]
        && let Some(conn) = h
            .get(header::CONNECTION)
            .and_then(|v| v.to_str().ok())
            .filter(|v| nominated(v).next().is_some())
            .map(str::to_owned)
    {
        for name in nominated(&conn) {
            if let Ok(name) = HeaderName::from_bytes(name.as_bytes())
                && name != header::TE
            {
                h.remove(name);
            }
        }
    }
    for (name, _) in HOP_BY_HOP.iter().zip(present).filter(|(_, p)| *p) {
        h.remove(name);
    }
    if te && let Some(value) = h.get(header::TE) {
        let trailers = value
            .to_str()
            .map(|v| {
                v.split(',')
                    .any(|p| p.trim().eq_ignore_ascii_case("trailers"))
            })
            .unwrap_or(false);
        if trailers {
            h.insert(header::TE, HeaderValue::from_static("trailers"));
        } else {
            h.remove(header::TE);
        }
    }
}

/// `0`, `1`, … `999` written one after another, at compile time.
const UNITS: [u8; 2890] = numbers(b"");
/// `1000`, `2000`, … `999000`: whole seconds in milliseconds.
const THOUSANDS: [u8; 5886] = numbers(b"000");

/// The decimals from `1` (`0` too when `suffix` is empty) to `999`, each followed by
/// `suffix`, concatenated.
const fn numbers<const N: usize>(suffix: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    let mut i = 0;
    let mut n = if suffix.is_empty() { 0 } else { 1 };
    while n < 1000 {
        if n >= 100 {
            out[i] = b'0' + (n / 100) as u8;
            i += 1;
        }
        if n >= 10 {
            out[i] = b'0' + (n / 10 % 10) as u8;
            i += 1;
        }
        out[i] = b'0' + (n % 10) as u8;
        i += 1;
        let mut j = 0;
        while j < suffix.len() {
            out[i] = suffix[j];
            i += 1;
            j += 1;
        }
        n += 1;
    }
    assert!(
        i == N,
        "the table's length is the sum of its numbers' lengths"
    );
    out
}

/// Where `n` (below 1,000) sits in a [`numbers`] table whose entries carry `extra`
/// suffix bytes and start at `first`.
#[allow(clippy::expect_used, reason = "constant tables of ASCII digits")]
fn entry(table: &'static [u8], n: usize, first: usize, extra: usize) -> &'static str {
    let (start, len) = match n {
        0..10 => ((n - first) * (1 + extra), 1),
        10..100 => ((10 - first) * (1 + extra) + (n - 10) * (2 + extra), 2),
        _ => (
            (10 - first) * (1 + extra) + 90 * (2 + extra) + (n - 100) * (3 + extra),
            3,
        ),
    };
    std::str::from_utf8(&table[start..start + len + extra]).expect("the tables are ASCII digits")
}

/// A number as a header value (`x-envoy-upstream-service-time`, the expected timeout):
/// taken from a static table when it is below 1,000 or whole thousands below a million,
/// so the common values cost no allocation.
pub fn decimal(n: u64) -> HeaderValue {
    let s = match n {
        0..1000 => entry(&UNITS, n as usize, 0, 0),
        1000..1_000_000 if n.is_multiple_of(1000) => entry(&THOUSANDS, (n / 1000) as usize, 1, 3),
        _ => return HeaderValue::from(n),
    };
    HeaderValue::from_static(s)
}

/// Whether a request is gRPC (`content-type: application/grpc…`).
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// The `grpc-timeout` header (gRPC's `<digits><unit>`, at most 8 digits), as a
/// duration; `None` when absent or malformed (Envoy ignores a malformed one).
pub fn grpc_timeout(headers: &HeaderMap) -> Option<std::time::Duration> {
    use std::time::Duration;
    let v = headers.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// A random (version 4) UUID, as Envoy generates for `x-request-id`.
#[allow(clippy::expect_used, reason = "hex digits and dashes are header bytes")]
pub fn request_id() -> HeaderValue {
    let mut b = [0u8; 16];
    fastrand::fill(&mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 36];
    let mut j = 0;
    for (i, byte) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out[j] = b'-';
            j += 1;
        }
        out[j] = HEX[(byte >> 4) as usize];
        out[j + 1] = HEX[(byte & 15) as usize];
        j += 2;
    }
    HeaderValue::from_bytes(&out).expect("hex and dashes are valid header bytes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_match_their_formatting() {
        for n in (0..1_000_010).chain([u64::MAX]) {
            assert_eq!(decimal(n).to_str().unwrap(), n.to_string(), "{n}");
        }
    }

    #[test]
    fn every_hop_by_hop_name_goes_whatever_connection_says() {
        for (i, name) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(hop_by_hop_index(name.as_str()), Some(i));
        }
        for connection in ["close", "keep-alive", "Close, x-private"] {
            let mut h = HeaderMap::new();
            for name in HOP_BY_HOP {
                h.insert(name, "x".parse().unwrap());
            }
            h.insert(header::CONNECTION, connection.parse().unwrap());
            h.insert("x-private", "1".parse().unwrap());
            h.insert("x-kept", "1".parse().unwrap());
            strip_hop_by_hop(&mut h);
            let mut names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
            names.sort();
            let kept: &[&str] = if connection.contains("x-private") {
                &["x-kept"]
            } else {
                &["x-kept", "x-private"]
            };
            assert_eq!(names, kept, "{connection}");
        }
    }

    #[test]
    fn strips_hop_by_hop_and_named_headers() {
        let mut h = HeaderMap::new();
        h.insert("connection", "keep-alive, x-private".parse().unwrap());
        h.insert("x-private", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("transfer-encoding", "chunked".parse().unwrap());
        h.insert("te", "gzip, trailers".parse().unwrap());
        h.insert("x-kept", "1".parse().unwrap());
        strip_hop_by_hop(&mut h);
        let mut names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        names.sort();
        assert_eq!(names, ["te", "x-kept"]);
        assert_eq!(h["te"], "trailers");
    }

    #[test]
    fn te_without_trailers_is_dropped() {
        let mut h = HeaderMap::new();
        h.insert("te", "gzip".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert!(h.is_empty());
    }

    #[test]
    fn request_ids_are_uuid_v4() {
        let id = request_id();
        let s = id.to_str().unwrap();
        assert_eq!(s.len(), 36);
        assert_eq!(&s[14..15], "4");
        assert!(matches!(&s[19..20], "8" | "9" | "a" | "b"));
        assert_ne!(request_id(), id);
    }
}
