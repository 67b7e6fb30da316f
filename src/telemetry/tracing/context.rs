//! Trace context on the wire: B3 (multi-header and the single `b3` header, Zipkin's)
//! and W3C `traceparent` / `tracestate` (OpenTelemetry's), read from a request and
//! written to the request that goes upstream.
use http::{HeaderMap, HeaderName, HeaderValue};

pub const X_B3_TRACE_ID: HeaderName = HeaderName::from_static("x-b3-traceid");
pub const X_B3_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-spanid");
pub const X_B3_PARENT_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-parentspanid");
pub const X_B3_SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");
pub const B3: HeaderName = HeaderName::from_static("b3");
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// A trace id: 64 or 128 bits (`wide`), as it arrived or was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceId {
    pub high: u64,
    pub low: u64,
    pub wide: bool,
}

impl TraceId {
    /// Lowercase hex: 16 digits, or 32 when wide.
    pub fn hex(&self) -> String {
        if self.wide {
            format!("{:016x}{:016x}", self.high, self.low)
        } else {
            format!("{:016x}", self.low)
        }
    }

    /// The 16 bytes OTLP carries (zero-padded when 64-bit).
    pub fn bytes(&self) -> [u8; 16] {
        let mut b = [0; 16];
        b[..8].copy_from_slice(&self.high.to_be_bytes());
        b[8..].copy_from_slice(&self.low.to_be_bytes());
        b
    }
}

/// A non-zero random 64-bit id.
pub fn random_id() -> u64 {
    loop {
        let v = fastrand::u64(..);
        if v != 0 {
            return v;
        }
    }
}

fn parse_hex64(s: &str) -> Option<u64> {
    (s.len() == 16 && s.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| u64::from_str_radix(s, 16).ok())
        .flatten()
}

fn parse_trace_id(s: &str) -> Option<TraceId> {
    match s.len() {
        16 => Some(TraceId {
            high: 0,
            low: parse_hex64(s)?,
            wide: false,
        }),
        32 => Some(TraceId {
            high: parse_hex64(&s[..16])?,
            low: parse_hex64(&s[16..])?,
            wide: true,
        }),
        _ => None,
    }
}

/// What a B3 request carries.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct B3Context {
    /// Trace and span id, when both are there.
    pub ids: Option<(TraceId, u64)>,
    pub parent: Option<u64>,
    /// `x-b3-sampled` (or the single header's flag, or a debug flag); `None`: the
    /// receiver decides.
    pub sampled: Option<bool>,
}

/// A malformed B3 header: Envoy then makes no span for the request.
#[derive(Debug, PartialEq, Eq)]
pub struct Malformed;

fn str_of<'a>(h: &'a HeaderMap, n: &HeaderName) -> Option<&'a str> {
    h.get(n).and_then(|v| v.to_str().ok())
}

/// Reads B3: the single `b3` header when present, else the `x-b3-*` headers.
pub fn extract_b3(h: &HeaderMap) -> Result<B3Context, Malformed> {
    if let Some(single) = h.get(B3) {
        return extract_b3_single(single.to_str().map_err(|_| Malformed)?);
    }
    let sampled = h
        .get(X_B3_SAMPLED)
        .map(|v| v.as_bytes() == b"1" || v.as_bytes() == b"true");
    let (trace, span) = (str_of(h, &X_B3_TRACE_ID), str_of(h, &X_B3_SPAN_ID));
    let (Some(trace), Some(span)) = (trace, span) else {
        return Ok(B3Context {
            sampled,
            ..Default::default()
        });
    };
    let trace = parse_trace_id(trace).ok_or(Malformed)?;
    let span = parse_hex64(span).ok_or(Malformed)?;
    let parent = match str_of(h, &X_B3_PARENT_SPAN_ID) {
        Some(p) => Some(parse_hex64(p).ok_or(Malformed)?),
        None => None,
    };
    Ok(B3Context {
        ids: Some((trace, span)),
        parent,
        sampled,
    })
}

/// `b3: {trace}-{span}[-{sampled}[-{parent}]]`, or only the sampling state.
fn extract_b3_single(v: &str) -> Result<B3Context, Malformed> {
    let flag = |f: &str| match f {
        "0" => Ok(Some(false)),
        "1" | "d" => Ok(Some(true)),
        _ if f.len() == 1 => Ok(None),
        _ => Err(Malformed),
    };
    let parts: Vec<&str> = v.split('-').collect();
    match parts.as_slice() {
        [f] if f.len() == 1 => Ok(B3Context {
            sampled: flag(f)?,
            ..Default::default()
        }),
        [t, s, rest @ ..] if rest.len() <= 2 => Ok(B3Context {
            ids: Some((
                parse_trace_id(t).ok_or(Malformed)?,
                parse_hex64(s).ok_or(Malformed)?,
            )),
            sampled: rest.first().map(|f| flag(f)).transpose()?.flatten(),
            parent: rest
                .get(1)
                .map(|p| parse_hex64(p).ok_or(Malformed))
                .transpose()?,
        }),
        _ => Err(Malformed),
    }
}

/// Writes B3's multi headers for a span (Envoy's Zipkin tracer writes these).
#[allow(clippy::expect_used, reason = "hex digits are header bytes")]
pub fn inject_b3(h: &mut HeaderMap, trace: TraceId, span: u64, parent: Option<u64>, sampled: bool) {
    let hex = |v: String| HeaderValue::from_str(&v).expect("hex is a header value");
    h.insert(X_B3_TRACE_ID, hex(trace.hex()));
    h.insert(X_B3_SPAN_ID, hex(format!("{span:016x}")));
    match parent {
        Some(p) => {
            h.insert(X_B3_PARENT_SPAN_ID, hex(format!("{p:016x}")));
        }
        None => {
            h.remove(X_B3_PARENT_SPAN_ID);
        }
    }
    h.insert(
        X_B3_SAMPLED,
        HeaderValue::from_static(if sampled { "1" } else { "0" }),
    );
}

/// A valid W3C `traceparent` and the `tracestate` next to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct W3cContext {
    pub trace: TraceId,
    pub parent: u64,
    pub sampled: bool,
    pub state: String,
}

/// Reads `traceparent` (version, 128-bit trace id, span id, flags; the all-zero ids
/// and version `ff` are invalid) and `tracestate`. `None`: no valid parent.
pub fn extract_w3c(h: &HeaderMap) -> Option<W3cContext> {
    let v = str_of(h, &TRACEPARENT)?;
    let parts: Vec<&str> = v.split('-').collect();
    let [version, trace, span, flags, rest @ ..] = parts.as_slice() else {
        return None;
    };
    let hex2 = |s: &str| {
        (s.len() == 2 && s.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| u8::from_str_radix(s, 16).ok())
            .flatten()
    };
    let version = hex2(version)?;
    // Version 00 has exactly four fields; later versions may add more.
    if version == 0xff || (version == 0 && !rest.is_empty()) {
        return None;
    }
    if trace.bytes().any(|b| b.is_ascii_uppercase()) || span.bytes().any(|b| b.is_ascii_uppercase())
    {
        return None;
    }
    let trace = parse_trace_id(trace).filter(|t| t.wide && (t.high | t.low) != 0)?;
    let parent = parse_hex64(span).filter(|&s| s != 0)?;
    let flags = hex2(flags)?;
    let state = h
        .get_all(TRACESTATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join(",");
    Some(W3cContext {
        trace,
        parent,
        sampled: flags & 1 == 1,
        state,
    })
}

/// Writes `traceparent` (and `tracestate`, empty when there is none, as Envoy's
/// OpenTelemetry tracer does).
#[allow(clippy::expect_used, reason = "hex digits are header bytes")]
pub fn inject_w3c(h: &mut HeaderMap, trace: TraceId, span: u64, sampled: bool, state: &str) {
    let wide = TraceId {
        wide: true,
        ..trace
    };
    let v = format!(
        "00-{}-{span:016x}-{}",
        wide.hex(),
        if sampled { "01" } else { "00" }
    );
    h.insert(
        TRACEPARENT,
        HeaderValue::from_str(&v).expect("hex is a header value"),
    );
    h.insert(
        TRACESTATE,
        HeaderValue::from_str(state).unwrap_or(HeaderValue::from_static("")),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    HeaderValue::from_str(v).unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn b3_multi_headers() {
        let h = headers(&[
            ("x-b3-traceid", "0000000000000001463ac35c9f6413ad"),
            ("x-b3-spanid", "463ac35c9f6413ad"),
            ("x-b3-parentspanid", "0020000000000001"),
            ("x-b3-sampled", "1"),
        ]);
        let c = extract_b3(&h).unwrap();
        let (t, s) = c.ids.unwrap();
        assert_eq!(t.hex(), "0000000000000001463ac35c9f6413ad");
        assert_eq!(s, 0x463ac35c9f6413ad);
        assert_eq!(c.parent, Some(0x0020000000000001));
        assert_eq!(c.sampled, Some(true));
        // 64-bit ids stay 64-bit.
        let h = headers(&[("x-b3-traceid", "463ac35c9f6413ad"), ("x-b3-spanid", "1")]);
        assert_eq!(extract_b3(&h), Err(Malformed));
        let h = headers(&[
            ("x-b3-traceid", "463ac35c9f6413ad"),
            ("x-b3-spanid", "463ac35c9f6413ad"),
            ("x-b3-sampled", "0"),
        ]);
        let c = extract_b3(&h).unwrap();
        assert_eq!(c.ids.unwrap().0.hex(), "463ac35c9f6413ad");
        assert_eq!(c.sampled, Some(false));
        // Only a sampling decision, or nothing.
        let c = extract_b3(&headers(&[("x-b3-sampled", "1")])).unwrap();
        assert_eq!((c.ids, c.sampled), (None, Some(true)));
        assert_eq!(extract_b3(&HeaderMap::new()).unwrap(), B3Context::default());
        // Anything but `1` or `true` is not sampled.
        let c = extract_b3(&headers(&[("x-b3-sampled", "yes")])).unwrap();
        assert_eq!(c.sampled, Some(false));
    }

    #[test]
    fn b3_single_header() {
        let c = extract_b3(&headers(&[(
            "b3",
            "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90",
        )]))
        .unwrap();
        assert_eq!(c.ids.unwrap().1, 0xe457b5a2e4d86bd1);
        assert_eq!(c.sampled, Some(true));
        assert_eq!(c.parent, Some(0x05e3ac9a4f6e3b90));
        let c = extract_b3(&headers(&[("b3", "0")])).unwrap();
        assert_eq!((c.ids, c.sampled), (None, Some(false)));
        let c = extract_b3(&headers(&[("b3", "80f198ee56343ba8-e457b5a2e4d86bd1")])).unwrap();
        assert_eq!(c.sampled, None);
        for bad in ["xx", "80f198ee56343ba8", "80f198ee56343ba8-zz", "a-b-c-d-e"] {
            assert_eq!(
                extract_b3(&headers(&[("b3", bad)])),
                Err(Malformed),
                "{bad}"
            );
        }
    }

    #[test]
    fn b3_injection_replaces_the_incoming_headers() {
        let mut h = headers(&[("x-b3-parentspanid", "0000000000000001")]);
        let t = TraceId {
            high: 1,
            low: 2,
            wide: true,
        };
        inject_b3(&mut h, t, 3, None, false);
        assert_eq!(h["x-b3-traceid"], "00000000000000010000000000000002");
        assert_eq!(h["x-b3-spanid"], "0000000000000003");
        assert!(h.get("x-b3-parentspanid").is_none());
        assert_eq!(h["x-b3-sampled"], "0");
    }

    #[test]
    fn w3c_traceparent() {
        let h = headers(&[
            (
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            ),
            ("tracestate", "congo=t61rcWkgMzE"),
        ]);
        let c = extract_w3c(&h).unwrap();
        assert_eq!(c.trace.hex(), "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(c.parent, 0xb7ad6b7169203331);
        assert!(c.sampled);
        assert_eq!(c.state, "congo=t61rcWkgMzE");
        for bad in [
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-x",
            "00-0af7651916cd43dd-b7ad6b7169203331-01",
            "garbage",
        ] {
            assert!(
                extract_w3c(&headers(&[("traceparent", bad)])).is_none(),
                "{bad}"
            );
        }
        let mut out = HeaderMap::new();
        inject_w3c(&mut out, c.trace, 0x56bc0de06a2eeabe, false, "");
        assert_eq!(
            out["traceparent"],
            "00-0af7651916cd43dd8448eb211c80319c-56bc0de06a2eeabe-00"
        );
        assert_eq!(out["tracestate"], "");
    }
}
