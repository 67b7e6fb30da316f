//! `envoy.filters.http.compressor` with gzip, brotli and zstd: response bodies are
//! compressed when the client accepts the encoding, as Envoy decides it. Istio's
//! Prometheus listener (15090) carries three of these, one per encoding.
//!
//! Envoy's rules, checked against Envoy 1.40 (one decision for the whole chain):
//! - a response is compressible when it has no `content-encoding`, no
//!   `cache-control: no-transform`, a content type on the list (or none), a
//!   `content-length` (if any) of at least `min_content_length`, no strong `etag` when
//!   `disable_on_etag_header`, and a status not in `uncompressible_response_codes`;
//!   every compressible response gets `vary: Accept-Encoding`;
//! - the encoding is the `accept-encoding` entry with the highest `q` among the chain's
//!   encodings, `identity` and `*`; equal `q`: the client's first (unless a later one's
//!   compressor has `choose_first`); `*` picks the chain's first compressor;
//! - compressing drops `content-length`, sets `content-encoding`, drops a strong `etag`
//!   (or weakens it with `weaken_etag_on_compress`); HEAD and bodiless responses are
//!   left alone.
use std::{
    io::Write,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, header};
use http_body::{Body as HttpBody, Frame, SizeHint};

use crate::{
    http::{
        body::{Body, BoxError, boxed},
        matchers::StringMatcher,
    },
    telemetry::stats::{Counter, Store},
};

/// The encoding a compressor library produces, with its tuning.
#[derive(Debug, Clone, PartialEq)]
pub enum Library {
    /// `compression_level` 1..=9 (Envoy's default: zlib's 6).
    Gzip { level: u32 },
    /// `quality` 0..=11 (default 3) and `window_bits` 10..=24 (default 18).
    Brotli { quality: u32, window_bits: u32 },
    /// `compression_level` (default 3) and `enable_checksum`.
    Zstd { level: i32, checksum: bool },
}

impl Library {
    /// The `content-encoding` token.
    pub fn encoding(&self) -> &'static str {
        match self {
            Library::Gzip { .. } => "gzip",
            Library::Brotli { .. } => "br",
            Library::Zstd { .. } => "zstd",
        }
    }

    /// The library's stat scope (`gzip`, `brotli`, `zstd`).
    fn stat_name(&self) -> &'static str {
        match self {
            Library::Gzip { .. } => "gzip",
            Library::Brotli { .. } => "brotli",
            Library::Zstd { .. } => "zstd",
        }
    }
}

/// A compiled `Compressor`.
#[derive(Debug, Clone)]
pub struct CompressorConfig {
    /// `compressor_library.name`: the stat scope.
    pub library_name: String,
    pub library: Library,
    /// `response_direction_config.common_config.enabled` (its default value).
    pub enabled: bool,
    /// `min_content_length` (default 30).
    pub min_content_length: u64,
    /// Content types that may be compressed; empty: Envoy's default list.
    pub content_types: Vec<String>,
    /// `content_type_matcher`, when given, instead of the list.
    pub content_type_matchers: Vec<StringMatcher>,
    pub disable_on_etag_header: bool,
    pub weaken_etag_on_compress: bool,
    pub remove_accept_encoding_header: bool,
    pub uncompressible_response_codes: Vec<u16>,
    pub choose_first: bool,
}

/// Envoy's default compressible content types.
const DEFAULT_TYPES: &[&str] = &[
    "text/html",
    "text/plain",
    "text/css",
    "application/javascript",
    "application/x-javascript",
    "text/javascript",
    "text/x-javascript",
    "text/ecmascript",
    "text/js",
    "text/jscript",
    "text/x-js",
    "application/ecmascript",
    "application/x-json",
    "application/xml",
    "application/json",
    "image/svg+xml",
    "text/xml",
    "application/xhtml+xml",
];

/// One compressor filter of a connection manager, with its stats.
#[derive(Debug)]
pub struct Compressor {
    config: Arc<CompressorConfig>,
    stats: CompressorStats,
}

#[derive(Debug)]
struct CompressorStats {
    compressed: Counter,
    not_compressed: Counter,
    no_accept_header: Counter,
    header_identity: Counter,
    header_wildcard: Counter,
    header_not_valid: Counter,
    header_compressor_used: Counter,
    header_compressor_overshadowed: Counter,
    content_length_too_small: Counter,
    not_compressed_etag: Counter,
    total_uncompressed_bytes: Counter,
    total_compressed_bytes: Counter,
}

impl Compressor {
    pub fn new(config: Arc<CompressorConfig>, store: &Arc<Store>, stat_prefix: &str) -> Self {
        let scope = format!(
            "http.{stat_prefix}.compressor.{}.{}.",
            config.library_name,
            config.library.stat_name()
        );
        let label = [("envoy_http_conn_manager_prefix", stat_prefix)];
        let c = |name: &str| {
            store.counter(
                format!("{scope}{name}"),
                &format!(
                    "envoy_http_compressor_{}_{}_{}",
                    config.library_name,
                    config.library.stat_name(),
                    name.replace('.', "_")
                ),
                &label,
            )
        };
        let stats = CompressorStats {
            compressed: c("response.compressed"),
            not_compressed: c("response.not_compressed"),
            no_accept_header: c("no_accept_header"),
            header_identity: c("header_identity"),
            header_wildcard: c("header_wildcard"),
            header_not_valid: c("header_not_valid"),
            header_compressor_used: c("header_compressor_used"),
            header_compressor_overshadowed: c("header_compressor_overshadowed"),
            content_length_too_small: c("response.content_length_too_small"),
            not_compressed_etag: c("not_compressed_etag"),
            total_uncompressed_bytes: c("response.total_uncompressed_bytes"),
            total_compressed_bytes: c("response.total_compressed_bytes"),
        };
        Compressor { config, stats }
    }

    /// Request side: the upstream does not see `accept-encoding` when asked.
    pub fn on_request(&self, headers: &mut HeaderMap) {
        if self.config.remove_accept_encoding_header {
            headers.remove(header::ACCEPT_ENCODING);
        }
    }

    /// Whether `resp` may be compressed by this compressor (content type, length,
    /// caching headers, status).
    fn compressible(&self, resp: &Response<Body>) -> bool {
        let c = &self.config;
        let h = resp.headers();
        if !c.enabled
            || h.contains_key(header::CONTENT_ENCODING)
            || c.uncompressible_response_codes
                .contains(&resp.status().as_u16())
            || h.get_all(header::CACHE_CONTROL).iter().any(|v| {
                v.to_str()
                    .is_ok_and(|v| v.to_ascii_lowercase().contains("no-transform"))
            })
        {
            return false;
        }
        if let Some(len) = h
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
            && len < c.min_content_length
        {
            self.stats.content_length_too_small.inc();
            return false;
        }
        if c.disable_on_etag_header && strong_etag(h) {
            self.stats.not_compressed_etag.inc();
            return false;
        }
        let Some(ct) = h.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
            return true;
        };
        let ct = ct
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if !c.content_type_matchers.is_empty() {
            return c.content_type_matchers.iter().any(|m| m.matches(&ct));
        }
        if c.content_types.is_empty() {
            DEFAULT_TYPES.contains(&ct.as_str())
        } else {
            c.content_types.iter().any(|t| t.eq_ignore_ascii_case(&ct))
        }
    }
}

fn strong_etag(h: &HeaderMap) -> bool {
    h.get(header::ETAG)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| !v.starts_with("W/"))
}

/// Response side of a chain of compressors: decides once, as Envoy's chain does.
/// `accept` is the request's `accept-encoding`; `bodiless` a HEAD request or a
/// response that ends with its headers.
pub fn on_response(
    chain: &[Compressor],
    accept: Option<&HeaderValue>,
    bodiless: bool,
    resp: &mut Response<Body>,
) {
    if chain.is_empty() {
        return;
    }
    let able: Vec<&Compressor> = chain.iter().filter(|c| c.compressible(resp)).collect();
    if able.is_empty() {
        for c in chain {
            c.stats.not_compressed.inc();
        }
        return;
    }
    add_vary(resp.headers_mut());
    let chosen = if bodiless {
        None
    } else {
        choose(&able, accept)
    };
    for c in chain {
        let used = chosen.is_some_and(|u| std::ptr::eq(u, c));
        if !used {
            c.stats.not_compressed.inc();
        }
    }
    let Some(c) = chosen else { return };
    c.stats.compressed.inc();
    let h = resp.headers_mut();
    h.remove(header::CONTENT_LENGTH);
    h.insert(
        header::CONTENT_ENCODING,
        HeaderValue::from_static(c.config.library.encoding()),
    );
    if strong_etag(h) {
        if c.config.weaken_etag_on_compress {
            let weak = h
                .get(header::ETAG)
                .and_then(|v| HeaderValue::from_str(&format!("W/{}", v.to_str().ok()?)).ok());
            match weak {
                Some(w) => {
                    h.insert(header::ETAG, w);
                }
                None => {
                    h.remove(header::ETAG);
                }
            }
        } else {
            h.remove(header::ETAG);
        }
    }
    let body = std::mem::replace(resp.body_mut(), crate::http::body::empty());
    *resp.body_mut() = boxed(Compressed {
        inner: body,
        encoder: Some(Encoder::new(&c.config.library)),
        uncompressed: c.stats.total_uncompressed_bytes.clone(),
        compressed: c.stats.total_compressed_bytes.clone(),
        trailers: None,
    });
}

/// `vary: Accept-Encoding`, once.
fn add_vary(h: &mut HeaderMap) {
    let present = h.get_all(header::VARY).iter().any(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("accept-encoding") || t.trim() == "*")
        })
    });
    if present {
        return;
    }
    match h
        .get(header::VARY)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
    {
        Some(existing) if !existing.is_empty() => {
            if let Ok(v) = HeaderValue::from_str(&format!("{existing}, Accept-Encoding")) {
                h.insert(header::VARY, v);
            }
        }
        _ => {
            h.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
        }
    }
}

/// The compressor the client's `accept-encoding` picks among `able`, counting Envoy's
/// header stats on the first compressor (the one whose decision the chain shares).
fn choose<'a>(able: &[&'a Compressor], accept: Option<&HeaderValue>) -> Option<&'a Compressor> {
    let stats = &able[0].stats;
    let Some(accept) = accept.and_then(|a| a.to_str().ok()) else {
        stats.no_accept_header.inc();
        return None;
    };
    // (token, q) in the client's order; unparseable q drops the token.
    let mut best: Option<(&str, f32, usize)> = None;
    let mut any_valid = false;
    for (i, part) in accept.split(',').enumerate() {
        let mut it = part.split(';');
        let token = it.next().unwrap_or("").trim();
        if token.is_empty() {
            continue;
        }
        let mut q = 1.0f32;
        let mut bad = false;
        for p in it {
            if let Some(v) = p.trim().strip_prefix("q=") {
                match v.trim().parse::<f32>() {
                    Ok(x) if (0.0..=1.0).contains(&x) => q = x,
                    _ => bad = true,
                }
            }
        }
        if bad {
            continue;
        }
        let known = token == "*"
            || token.eq_ignore_ascii_case("identity")
            || able
                .iter()
                .any(|c| c.config.library.encoding().eq_ignore_ascii_case(token));
        if !known || q <= 0.0 {
            continue;
        }
        any_valid = true;
        let better = match best {
            None => true,
            Some((_, bq, _)) if q > bq => true,
            Some((_, bq, _)) if q == bq => able.iter().any(|c| {
                c.config.choose_first && c.config.library.encoding().eq_ignore_ascii_case(token)
            }),
            _ => false,
        };
        if better {
            best = Some((token, q, i));
        }
    }
    let Some((token, _, _)) = best else {
        if !any_valid {
            stats.header_not_valid.inc();
        }
        return None;
    };
    if token.eq_ignore_ascii_case("identity") {
        stats.header_identity.inc();
        return None;
    }
    if token == "*" {
        stats.header_wildcard.inc();
        return Some(able[0]);
    }
    let c = able
        .iter()
        .find(|c| c.config.library.encoding().eq_ignore_ascii_case(token))
        .copied()?;
    c.stats.header_compressor_used.inc();
    for other in able {
        if !std::ptr::eq(*other, c) && accept.contains(other.config.library.encoding()) {
            other.stats.header_compressor_overshadowed.inc();
        }
    }
    Some(c)
}

enum Encoder {
    Gzip(flate2::write::GzEncoder<Vec<u8>>),
    Brotli(Box<brotli::CompressorWriter<Vec<u8>>>),
    Zstd(zstd::stream::write::Encoder<'static, Vec<u8>>),
}

impl Encoder {
    #[allow(
        clippy::expect_used,
        reason = "zstd clamps any level: it fails only when out of memory"
    )]
    fn new(lib: &Library) -> Self {
        match *lib {
            Library::Gzip { level } => Encoder::Gzip(flate2::write::GzEncoder::new(
                Vec::new(),
                flate2::Compression::new(level),
            )),
            Library::Brotli {
                quality,
                window_bits,
            } => Encoder::Brotli(Box::new(brotli::CompressorWriter::new(
                Vec::new(),
                4096,
                quality,
                window_bits,
            ))),
            Library::Zstd { level, checksum } => {
                let mut e = zstd::stream::write::Encoder::new(Vec::new(), level)
                    .expect("a zstd encoder with a valid level");
                let _ = e.include_checksum(checksum);
                Encoder::Zstd(e)
            }
        }
    }

    /// Compresses `data` and flushes, so each frame of a streamed body goes out at once.
    fn push(&mut self, data: &[u8]) -> std::io::Result<Bytes> {
        match self {
            Encoder::Gzip(e) => {
                e.write_all(data)?;
                e.flush()?;
                Ok(std::mem::take(e.get_mut()).into())
            }
            Encoder::Brotli(e) => {
                e.write_all(data)?;
                e.flush()?;
                Ok(std::mem::take(e.get_mut()).into())
            }
            Encoder::Zstd(e) => {
                e.write_all(data)?;
                e.flush()?;
                Ok(std::mem::take(e.get_mut()).into())
            }
        }
    }

    /// The end of the stream.
    fn finish(self) -> std::io::Result<Bytes> {
        Ok(match self {
            Encoder::Gzip(e) => e.finish()?.into(),
            Encoder::Brotli(e) => e.into_inner().into(),
            Encoder::Zstd(e) => e.finish()?.into(),
        })
    }
}

pin_project_lite::pin_project! {
    /// A response body, compressed as it streams.
    struct Compressed {
        #[pin]
        inner: Body,
        encoder: Option<Encoder>,
        uncompressed: Counter,
        compressed: Counter,
        trailers: Option<HeaderMap>,
    }
}

impl HttpBody for Compressed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        loop {
            let Some(enc) = this.encoder.as_mut() else {
                return Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))));
            };
            let frame = match this.inner.as_mut().poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(f) => f,
            };
            let out = match frame {
                Some(Ok(f)) => match f.into_data() {
                    Ok(data) => {
                        this.uncompressed.add(data.len() as u64);
                        enc.push(&data)
                    }
                    Err(f) => {
                        *this.trailers = f.into_trailers().ok();
                        this.encoder
                            .take()
                            .map_or(Ok(Bytes::new()), Encoder::finish)
                    }
                },
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => this
                    .encoder
                    .take()
                    .map_or(Ok(Bytes::new()), Encoder::finish),
            };
            match out {
                Ok(bytes) if bytes.is_empty() => continue,
                Ok(bytes) => {
                    this.compressed.add(bytes.len() as u64);
                    return Poll::Ready(Some(Ok(Frame::data(bytes))));
                }
                Err(e) => return Poll::Ready(Some(Err(e.into()))),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.encoder.is_none() && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use http_body_util::BodyExt;

    use super::*;

    fn compressor(lib: Library, name: &str) -> Compressor {
        Compressor::new(
            Arc::new(CompressorConfig {
                library_name: name.into(),
                library: lib,
                enabled: true,
                min_content_length: 30,
                content_types: vec!["text/plain".into()],
                content_type_matchers: Vec::new(),
                disable_on_etag_header: false,
                weaken_etag_on_compress: false,
                remove_accept_encoding_header: false,
                uncompressible_response_codes: Vec::new(),
                choose_first: false,
            }),
            &Store::new(),
            "stats",
        )
    }

    /// Istio's 15090 chain: brotli, zstd, gzip.
    fn istio_chain() -> Vec<Compressor> {
        vec![
            compressor(
                Library::Brotli {
                    quality: 3,
                    window_bits: 18,
                },
                "stats_brotli",
            ),
            compressor(
                Library::Zstd {
                    level: 3,
                    checksum: false,
                },
                "stats_zstd",
            ),
            compressor(Library::Gzip { level: 6 }, "stats_gzip"),
        ]
    }

    const TEXT: &str = "envoy_cluster_upstream_cx_total{cluster_name=\"xds-grpc\"} 5\n";

    fn response(body: &str) -> Response<Body> {
        Response::builder()
            .header("content-type", "text/plain; charset=UTF-8")
            .body(crate::http::body::full(body.repeat(20)))
            .unwrap()
    }

    async fn run(accept: Option<&str>) -> (HeaderMap, Vec<u8>) {
        let chain = istio_chain();
        let mut resp = response(TEXT);
        let accept = accept.map(|a| HeaderValue::from_str(a).unwrap());
        on_response(&chain, accept.as_ref(), false, &mut resp);
        let (parts, body) = resp.into_parts();
        let bytes = body.collect().await.unwrap().to_bytes().to_vec();
        (parts.headers, bytes)
    }

    fn decode(encoding: Option<&str>, bytes: &[u8]) -> String {
        let mut out = String::new();
        match encoding {
            None => out = String::from_utf8(bytes.to_vec()).unwrap(),
            Some("gzip") => {
                flate2::read::GzDecoder::new(bytes)
                    .read_to_string(&mut out)
                    .unwrap();
            }
            Some("br") => {
                brotli::Decompressor::new(bytes, 4096)
                    .read_to_string(&mut out)
                    .unwrap();
            }
            Some("zstd") => out = String::from_utf8(zstd::decode_all(bytes).unwrap()).unwrap(),
            Some(other) => panic!("{other}"),
        }
        out
    }

    /// The choices Envoy 1.40 made on Istio's 15090 listener, one per Accept-Encoding.
    #[tokio::test]
    async fn the_encoding_envoy_picks() {
        for (accept, want) in [
            (None, None),
            (Some("gzip"), Some("gzip")),
            (Some("br"), Some("br")),
            (Some("zstd"), Some("zstd")),
            (Some("gzip, br"), Some("gzip")),
            (Some("br, gzip"), Some("br")),
            (Some("zstd, gzip"), Some("zstd")),
            (Some("gzip, deflate, br, zstd"), Some("gzip")),
            (Some("gzip;q=0.5, br;q=1.0"), Some("br")),
            (Some("br;q=0.1, gzip;q=0.9"), Some("gzip")),
            (Some("zstd;q=0.9, gzip;q=1"), Some("gzip")),
            (Some("gzip;q=0"), None),
            (Some("*"), Some("br")),
            (Some("identity"), None),
            (Some("deflate"), None),
            (Some("br;q=0, gzip"), Some("gzip")),
        ] {
            let (h, body) = run(accept).await;
            let got = h.get("content-encoding").map(|v| v.to_str().unwrap());
            assert_eq!(got, want, "accept-encoding {accept:?}");
            assert_eq!(h.get("vary").unwrap(), "Accept-Encoding", "{accept:?}");
            assert!(h.get("content-length").is_none() || got.is_none());
            assert_eq!(decode(got, &body), TEXT.repeat(20), "{accept:?}");
        }
    }

    #[tokio::test]
    async fn what_is_not_compressed() {
        let chain = istio_chain();
        let gzip = HeaderValue::from_static("gzip");
        // Another content type: no vary, no compression.
        let mut r = Response::builder()
            .header("content-type", "image/png")
            .body(crate::http::body::full("x".repeat(100)))
            .unwrap();
        on_response(&chain, Some(&gzip), false, &mut r);
        assert!(r.headers().get("vary").is_none());
        assert!(r.headers().get("content-encoding").is_none());
        // Too short, already encoded, no-transform.
        for (k, v) in [
            ("content-length", "10"),
            ("content-encoding", "br"),
            ("cache-control", "public, no-transform"),
        ] {
            let mut r = response(TEXT);
            r.headers_mut().insert(k, HeaderValue::from_static(v));
            on_response(&chain, Some(&gzip), false, &mut r);
            assert_ne!(
                r.headers()
                    .get("content-encoding")
                    .map(|v| v.to_str().unwrap()),
                Some("gzip"),
                "{k}"
            );
        }
        // A HEAD response is compressible (vary) but not compressed.
        let mut r = response(TEXT);
        on_response(&chain, Some(&gzip), true, &mut r);
        assert_eq!(r.headers().get("vary").unwrap(), "Accept-Encoding");
        assert!(r.headers().get("content-encoding").is_none());
        // A strong etag goes when compressing; a weak one stays.
        let mut r = response(TEXT);
        r.headers_mut()
            .insert("etag", HeaderValue::from_static("\"abc\""));
        on_response(&chain, Some(&gzip), false, &mut r);
        assert!(r.headers().get("etag").is_none());
        let mut r = response(TEXT);
        r.headers_mut()
            .insert("etag", HeaderValue::from_static("W/\"abc\""));
        r.headers_mut()
            .insert("vary", HeaderValue::from_static("Origin"));
        on_response(&chain, Some(&gzip), false, &mut r);
        assert_eq!(r.headers().get("etag").unwrap(), "W/\"abc\"");
        assert_eq!(r.headers().get("vary").unwrap(), "Origin, Accept-Encoding");
    }
}
