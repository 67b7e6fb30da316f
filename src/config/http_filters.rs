//! Compiles the connection manager's HTTP filters and their per-route configs
//! (`typed_per_filter_config`): `envoy.filters.http.fault` and `envoy.filters.http.cors`.
use std::{collections::HashMap, sync::Arc, time::Duration};

use envoy_types::pb::{
    envoy::{
        extensions::filters::{
            common::fault::v3::{FaultDelay, fault_delay},
            http::{
                cors::v3::CorsPolicy as CorsPolicyPb,
                fault::v3::{FaultAbort, HttpFault, fault_abort},
            },
        },
        r#type::v3::FractionalPercent,
    },
    google::protobuf::Any,
};

use super::{
    model::*,
    proto,
    route_config::{header_matcher, string_matcher},
};
use crate::http::filters::fault::{Abort, AbortKind, Delay, DelayKind};
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher;

type Result<T> = std::result::Result<T, String>;

pub const FAULT: &str = "envoy.extensions.filters.http.fault.v3.HTTPFault";
pub const COMPRESSOR: &str = "envoy.extensions.filters.http.compressor.v3.Compressor";
const GZIP: &str = "envoy.extensions.compression.gzip.compressor.v3.Gzip";
const BROTLI: &str = "envoy.extensions.compression.brotli.compressor.v3.Brotli";
const ZSTD: &str = "envoy.extensions.compression.zstd.compressor.v3.Zstd";
pub const CORS: &str = "envoy.extensions.filters.http.cors.v3.Cors";
const CORS_POLICY: &str = "envoy.extensions.filters.http.cors.v3.CorsPolicy";

/// `typed_per_filter_config` of one level.
pub fn per_filter(map: &HashMap<String, Any>, path: &str) -> Result<PerFilter> {
    let mut names: Vec<&String> = map.keys().collect();
    names.sort();
    let mut out = Vec::new();
    for name in names {
        let any = &map[name];
        let fpath = format!("{path}.typed_per_filter_config[{name}]");
        match proto::type_name(&any.type_url) {
            FAULT => {
                let f: HttpFault = proto::unpack(any).map_err(|e| format!("{fpath}: {e}"))?;
                out.push((
                    name.clone(),
                    FilterOverride::Fault(Arc::new(fault(&f, &fpath)?)),
                ));
            }
            CORS_POLICY => {
                let c: CorsPolicyPb = proto::unpack(any).map_err(|e| format!("{fpath}: {e}"))?;
                out.push((
                    name.clone(),
                    FilterOverride::Cors(Arc::new(cors(&c, &fpath)?)),
                ));
            }
            super::rbac::HTTP_RBAC_PER_ROUTE => {
                let r: envoy_types::pb::envoy::extensions::filters::http::rbac::v3::RbacPerRoute =
                    proto::unpack(any).map_err(|e| format!("{fpath}: {e}"))?;
                let config = r
                    .rbac
                    .as_ref()
                    .map(|c| super::rbac::http(c, &format!("{fpath}.rbac")).map(Arc::new))
                    .transpose()?;
                out.push((name.clone(), FilterOverride::Rbac(config)));
            }
            super::jwt_authn::JWT_AUTHN_PER_ROUTE => out.push((
                name.clone(),
                FilterOverride::JwtAuthn(Arc::new(super::jwt_authn::per_route(any, &fpath)?)),
            )),
            EXT_AUTHZ_PER_ROUTE => out.push((
                name.clone(),
                FilterOverride::ExtAuthz(Arc::new(ext_authz_per_route(any, &fpath)?)),
            )),
            other => return Err(format!("{fpath} ({other}): not supported")),
        }
    }
    Ok(out)
}

pub const GRPC_STATS: &str = "envoy.extensions.filters.http.grpc_stats.v3.FilterConfig";

/// A compiled grpc_stats `FilterConfig` (`any` holds it). `emit_filter_state` is
/// accepted: the object it would leave is read by access-log operators and Istio's
/// stats filter, neither of which reads it yet.
pub fn grpc_stats(
    any: &Any,
    path: &str,
) -> Result<crate::http::filters::grpc_stats::GrpcStatsConfig> {
    use crate::http::filters::grpc_stats::{GrpcStatsConfig, Methods};
    use envoy_types::pb::envoy::extensions::filters::http::grpc_stats::v3::{
        FilterConfig, filter_config::PerMethodStatSpecifier as P,
    };
    let c: FilterConfig = proto::unpack(any).map_err(|e| format!("{path}: {e}"))?;
    if c.enable_upstream_stats {
        return Err(format!("{path}.enable_upstream_stats: not supported"));
    }
    let methods = match c.per_method_stat_specifier {
        None => Methods::None,
        Some(P::StatsForAllMethods(b)) if b.value => Methods::All,
        Some(P::StatsForAllMethods(_)) => Methods::None,
        Some(P::IndividualMethodStatsAllowlist(l)) => Methods::Allowlist(
            l.services
                .into_iter()
                .map(|s| (s.name, s.method_names))
                .collect(),
        ),
    };
    Ok(GrpcStatsConfig {
        methods,
        replace_dots: c.replace_dots_in_grpc_service_name,
    })
}

/// A compiled `Compressor` (`any` holds it).
#[allow(deprecated)]
pub fn compressor(any: &Any, path: &str) -> Result<CompressorConfig> {
    use crate::http::filters::compressor::Library;
    use envoy_types::pb::envoy::extensions::{
        compression::{
            brotli::compressor::v3::Brotli, gzip::compressor::v3::Gzip, zstd::compressor::v3::Zstd,
        },
        filters::http::compressor::v3::Compressor,
    };
    let c: Compressor = proto::unpack(any).map_err(|e| format!("{path}: {e}"))?;
    if c.request_direction_config.is_some() {
        return Err(format!("{path}.request_direction_config: not supported"));
    }
    let lib = c
        .compressor_library
        .as_ref()
        .ok_or_else(|| format!("{path}.compressor_library: required"))?;
    let lpath = format!("{path}.compressor_library");
    let lany = lib
        .typed_config
        .as_ref()
        .ok_or_else(|| format!("{lpath}.typed_config: required"))?;
    let err = |e: String| format!("{lpath}: {e}");
    let library = match proto::type_name(&lany.type_url) {
        GZIP => {
            let g: Gzip = proto::unpack(lany).map_err(err)?;
            Library::Gzip {
                level: match g.compression_level {
                    0 => 6,
                    l => l as u32,
                },
            }
        }
        BROTLI => {
            let b: Brotli = proto::unpack(lany).map_err(err)?;
            Library::Brotli {
                quality: b.quality.map_or(3, |q| q.value),
                window_bits: b.window_bits.map_or(18, |w| w.value),
            }
        }
        ZSTD => {
            let z: Zstd = proto::unpack(lany).map_err(err)?;
            if z.dictionary.is_some() {
                return Err(format!("{lpath}.typed_config.dictionary: not supported"));
            }
            Library::Zstd {
                level: z.compression_level.map_or(3, |l| l.value as i32),
                checksum: z.enable_checksum,
            }
        }
        other => return Err(format!("{lpath} ({other}): not supported")),
    };
    let resp = c.response_direction_config.clone().unwrap_or_default();
    if resp.status_header_enabled {
        return Err(format!(
            "{path}.response_direction_config.status_header_enabled: not supported"
        ));
    }
    let common = resp.common_config.clone().unwrap_or_default();
    let cpath = format!("{path}.response_direction_config.common_config");
    // The deprecated top-level fields stand in for the response direction's.
    let content_types = if common.content_type.is_empty() {
        c.content_type.clone()
    } else {
        common.content_type.clone()
    };
    let enabled = common
        .enabled
        .as_ref()
        .or(c.runtime_enabled.as_ref())
        .and_then(|f| f.default_value.as_ref())
        .is_none_or(|b| b.value);
    Ok(CompressorConfig {
        library_name: lib.name.clone(),
        library,
        enabled,
        min_content_length: common
            .min_content_length
            .or(c.content_length)
            .map_or(30, |v| u64::from(v.value)),
        content_types,
        content_type_matchers: common
            .content_type_matcher
            .iter()
            .enumerate()
            .map(|(i, m)| string_matcher(m, &format!("{cpath}.content_type_matcher[{i}]")))
            .collect::<Result<_>>()?,
        disable_on_etag_header: resp.disable_on_etag_header || c.disable_on_etag_header,
        weaken_etag_on_compress: resp.weaken_etag_on_compress,
        remove_accept_encoding_header: resp.remove_accept_encoding_header
            || c.remove_accept_encoding_header,
        uncompressible_response_codes: resp
            .uncompressible_response_codes
            .iter()
            .map(|&c| c as u16)
            .collect(),
        choose_first: c.choose_first,
    })
}

/// A compiled `CorsPolicy`.
fn cors(c: &CorsPolicyPb, path: &str) -> Result<CorsPolicy> {
    let value = |v: &str, field: &str| -> Result<Option<http::HeaderValue>> {
        if v.is_empty() {
            return Ok(None);
        }
        http::HeaderValue::from_str(v)
            .map(Some)
            .map_err(|_| format!("{path}.{field}: not a valid header value"))
    };
    let enabled_per_million = match &c.filter_enabled {
        None => 1_000_000,
        Some(f) => per_million(
            f.default_value.as_ref(),
            &format!("{path}.filter_enabled.default_value"),
        )?,
    };
    Ok(CorsPolicy {
        allow_origins: c
            .allow_origin_string_match
            .iter()
            .enumerate()
            .map(|(i, m)| string_matcher(m, &format!("{path}.allow_origin_string_match[{i}]")))
            .collect::<Result<_>>()?,
        allow_methods: value(&c.allow_methods, "allow_methods")?,
        allow_headers: value(&c.allow_headers, "allow_headers")?,
        expose_headers: value(&c.expose_headers, "expose_headers")?,
        max_age: value(&c.max_age, "max_age")?,
        allow_credentials: c.allow_credentials.as_ref().is_some_and(|b| b.value),
        enabled_per_million,
        forward_not_matching_preflights: c
            .forward_not_matching_preflights
            .as_ref()
            .is_none_or(|b| b.value),
    })
}

/// A compiled `HTTPFault`. Runtime keys are accepted and never consulted (there is no
/// runtime), as with a stock Envoy whose runtime holds none of them.
pub fn fault(f: &HttpFault, path: &str) -> Result<FaultConfig> {
    if f.response_rate_limit.is_some() {
        return Err(format!("{path}.response_rate_limit: not supported"));
    }
    Ok(FaultConfig {
        delay: f
            .delay
            .as_ref()
            .map(|d| delay(d, &format!("{path}.delay")))
            .transpose()?,
        abort: f
            .abort
            .as_ref()
            .map(|a| abort(a, &format!("{path}.abort")))
            .transpose()?,
        upstream_cluster: (!f.upstream_cluster.is_empty()).then(|| f.upstream_cluster.clone()),
        headers: f
            .headers
            .iter()
            .enumerate()
            .map(|(i, h)| header_matcher(h, &format!("{path}.headers[{i}]")))
            .collect::<Result<_>>()?,
        downstream_nodes: f.downstream_nodes.clone(),
        max_active: f.max_active_faults.as_ref().map(|m| u64::from(m.value)),
    })
}

fn delay(d: &FaultDelay, path: &str) -> Result<Delay> {
    let kind = match &d.fault_delay_secifier {
        Some(fault_delay::FaultDelaySecifier::FixedDelay(t)) => DelayKind::Fixed(Duration::new(
            t.seconds.max(0) as u64,
            t.nanos.max(0) as u32,
        )),
        Some(fault_delay::FaultDelaySecifier::HeaderDelay(_)) => DelayKind::Header,
        None => return Err(format!("{path}: fixed_delay or header_delay is required")),
    };
    Ok(Delay {
        kind,
        per_million: per_million(d.percentage.as_ref(), &format!("{path}.percentage"))?,
    })
}

fn abort(a: &FaultAbort, path: &str) -> Result<Abort> {
    if !a.response_body.is_empty() {
        return Err(format!("{path}.response_body: not supported"));
    }
    let kind = match &a.error_type {
        Some(fault_abort::ErrorType::HttpStatus(c)) if (200..600).contains(c) => {
            AbortKind::Http(*c as u16)
        }
        Some(fault_abort::ErrorType::HttpStatus(c)) => {
            return Err(format!("{path}.http_status: {c} is not in [200, 600)"));
        }
        Some(fault_abort::ErrorType::GrpcStatus(g)) => AbortKind::Grpc(*g),
        Some(fault_abort::ErrorType::HeaderAbort(_)) => AbortKind::Header,
        None => {
            return Err(format!(
                "{path}: http_status, grpc_status or header_abort is required"
            ));
        }
    };
    Ok(Abort {
        kind,
        per_million: per_million(a.percentage.as_ref(), &format!("{path}.percentage"))?,
    })
}

/// A `FractionalPercent` as parts per million; absent means 0, as in Envoy.
pub fn per_million(p: Option<&FractionalPercent>, path: &str) -> Result<u32> {
    use envoy_types::pb::envoy::r#type::v3::fractional_percent::DenominatorType;
    let Some(p) = p else { return Ok(0) };
    let scale = match DenominatorType::try_from(p.denominator) {
        Ok(DenominatorType::Hundred) => 10_000,
        Ok(DenominatorType::TenThousand) => 100,
        Ok(DenominatorType::Million) => 1,
        Err(_) => return Err(format!("{path}.denominator: unknown value")),
    };
    Ok(p.numerator.saturating_mul(scale).min(1_000_000))
}

pub const EXT_AUTHZ: &str = "envoy.extensions.filters.http.ext_authz.v3.ExtAuthz";
pub const EXT_AUTHZ_PER_ROUTE: &str = "envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute";

/// A compiled `ExtAuthz` (`any` holds it). `transport_api_version` must be V3 (or
/// unset); `include_peer_certificate` is accepted and sends nothing until pilotfish
/// terminates TLS.
pub fn ext_authz(any: &Any, path: &str) -> Result<crate::http::filters::ext_authz::ExtAuthzConfig> {
    use crate::http::filters::ext_authz::{ExtAuthzConfig, Service};
    use envoy_types::pb::envoy::{
        config::core::v3::{ApiVersion, http_uri},
        extensions::filters::http::ext_authz::v3::{ExtAuthz, ext_authz::Services},
    };
    let c: ExtAuthz = proto::unpack(any).map_err(|e| format!("{path}: {e}"))?;
    if !matches!(
        ApiVersion::try_from(c.transport_api_version),
        Ok(ApiVersion::Auto | ApiVersion::V3)
    ) {
        return Err(format!(
            "{path}.transport_api_version: only V3 is supported"
        ));
    }
    let list = |l: &Option<envoy_types::pb::envoy::r#type::matcher::v3::ListStringMatcher>,
                p: &str|
     -> Result<Option<Vec<crate::http::matchers::StringMatcher>>> {
        l.as_ref()
            .map(|l| {
                l.patterns
                    .iter()
                    .enumerate()
                    .map(|(i, m)| {
                        // Header names are matched lowercase, as Envoy keeps them.
                        let mut m = m.clone();
                        if let Some(string_matcher::MatchPattern::Exact(v)) = &mut m.match_pattern {
                            *v = v.to_ascii_lowercase();
                        }
                        string_matcher(&m, &format!("{p}.patterns[{i}]"))
                    })
                    .collect()
            })
            .transpose()
    };
    let mut allowed_headers = list(&c.allowed_headers, &format!("{path}.allowed_headers"))?;
    let service = match &c.services {
        Some(Services::GrpcService(g)) => {
            let t = envoy_grpc(
                g,
                &format!("{path}.grpc_service"),
                Duration::from_millis(200),
            )?;
            Service::Grpc {
                cluster: t.cluster,
                authority: t.authority,
                timeout: t.timeout,
                initial_metadata: t.metadata,
            }
        }
        Some(Services::HttpService(h)) => {
            let hpath = format!("{path}.http_service");
            let uri = h
                .server_uri
                .as_ref()
                .ok_or_else(|| format!("{hpath}.server_uri: required"))?;
            let cluster = match &uri.http_upstream_type {
                Some(http_uri::HttpUpstreamType::Cluster(c)) if !c.is_empty() => c.clone(),
                _ => return Err(format!("{hpath}.server_uri.cluster: required")),
            };
            let timeout = uri
                .timeout
                .as_ref()
                .map(super::compile::duration)
                .ok_or_else(|| format!("{hpath}.server_uri.timeout: required"))?;
            let req = h.authorization_request.as_ref();
            let resp = h.authorization_response.as_ref();
            // The older place for the HTTP service's allowed headers.
            #[allow(deprecated)]
            if let Some(l) = req.and_then(|r| r.allowed_headers.as_ref()) {
                let p = format!("{hpath}.authorization_request.allowed_headers");
                allowed_headers = list(&Some(l.clone()), &p)?;
            }
            let resp_list = |f: fn(
                &envoy_types::pb::envoy::extensions::filters::http::ext_authz::v3::AuthorizationResponse,
            ) -> &Option<envoy_types::pb::envoy::r#type::matcher::v3::ListStringMatcher>,
                             name: &str|
             -> Result<Vec<crate::http::matchers::StringMatcher>> {
                Ok(list(
                    &resp.and_then(|r| f(r).clone()),
                    &format!("{hpath}.authorization_response.{name}"),
                )?
                .unwrap_or_default())
            };
            Service::Http {
                cluster,
                timeout,
                path_prefix: h.path_prefix.clone(),
                headers_to_add: headers_to_add(
                    req.map_or(&[][..], |r| &r.headers_to_add),
                    &format!("{hpath}.authorization_request.headers_to_add"),
                )?,
                allowed_upstream_headers: resp_list(
                    |r| &r.allowed_upstream_headers,
                    "allowed_upstream_headers",
                )?,
                allowed_upstream_headers_to_append: resp_list(
                    |r| &r.allowed_upstream_headers_to_append,
                    "allowed_upstream_headers_to_append",
                )?,
                allowed_client_headers: resp_list(
                    |r| &r.allowed_client_headers,
                    "allowed_client_headers",
                )?,
                allowed_client_headers_on_success: resp_list(
                    |r| &r.allowed_client_headers_on_success,
                    "allowed_client_headers_on_success",
                )?,
            }
        }
        None => {
            return Err(format!(
                "{path}: one of grpc_service or http_service is required"
            ));
        }
    };
    let enabled_metadata = c
        .filter_enabled_metadata
        .as_ref()
        .map(|m| super::rbac::metadata_matcher(m, &format!("{path}.filter_enabled_metadata")))
        .transpose()?;
    let status_on_error = match c.status_on_error.as_ref().map(|s| s.code) {
        None | Some(0) => http::StatusCode::FORBIDDEN,
        Some(code) => u16::try_from(code)
            .ok()
            .and_then(|c| http::StatusCode::from_u16(c).ok())
            .ok_or_else(|| format!("{path}.status_on_error.code: {code} is not an HTTP status"))?,
    };
    Ok(ExtAuthzConfig {
        service,
        failure_mode_allow: c.failure_mode_allow,
        failure_mode_allow_header_add: c.failure_mode_allow_header_add,
        with_request_body: c.with_request_body.as_ref().map(buffer_settings),
        status_on_error,
        stat_prefix: c.stat_prefix.clone(),
        allowed_headers,
        disallowed_headers: list(&c.disallowed_headers, &format!("{path}.disallowed_headers"))?
            .unwrap_or_default(),
        enabled_metadata,
    })
}

fn buffer_settings(
    b: &envoy_types::pb::envoy::extensions::filters::http::ext_authz::v3::BufferSettings,
) -> crate::http::filters::ext_authz::BufferSettings {
    crate::http::filters::ext_authz::BufferSettings {
        max_request_bytes: b.max_request_bytes as usize,
        allow_partial_message: b.allow_partial_message,
        pack_as_bytes: b.pack_as_bytes,
    }
}

/// A compiled `ExtAuthzPerRoute`.
pub fn ext_authz_per_route(
    any: &Any,
    path: &str,
) -> Result<crate::http::filters::ext_authz::PerRoute> {
    use crate::http::filters::ext_authz::PerRoute;
    use envoy_types::pb::envoy::extensions::filters::http::ext_authz::v3::{
        ExtAuthzPerRoute, ext_authz_per_route::Override,
    };
    let r: ExtAuthzPerRoute = proto::unpack(any).map_err(|e| format!("{path}: {e}"))?;
    match r.r#override {
        Some(Override::Disabled(true)) => Ok(PerRoute::Disabled),
        Some(Override::Disabled(false)) => Err(format!(
            "{path}.disabled: must be true (a filter disabled by default is not supported)"
        )),
        Some(Override::CheckSettings(c)) => Ok(PerRoute::Check {
            context_extensions: c.context_extensions,
            disable_request_body_buffering: c.disable_request_body_buffering,
        }),
        None => Err(format!("{path}: disabled or check_settings is required")),
    }
}

/// A `GrpcService` through one of pilotfish's clusters (`envoy_grpc`).
pub(super) struct GrpcTarget {
    pub cluster: String,
    /// `authority` (default: the cluster name).
    pub authority: String,
    /// `timeout`, else `default_timeout`.
    pub timeout: Duration,
    pub metadata: Vec<(http::HeaderName, http::HeaderValue)>,
}

/// Header name/value pairs (`key`, `value` or `raw_value`), names lowercased.
pub(super) fn headers_to_add(
    hs: &[envoy_types::pb::envoy::config::core::v3::HeaderValue],
    path: &str,
) -> Result<Vec<(http::HeaderName, http::HeaderValue)>> {
    hs.iter()
        .enumerate()
        .map(|(i, h)| {
            let name = http::HeaderName::from_bytes(h.key.to_ascii_lowercase().as_bytes())
                .map_err(|_| format!("{path}[{i}].key: '{}' is not a header name", h.key))?;
            let raw = if h.raw_value.is_empty() {
                h.value.as_bytes()
            } else {
                &h.raw_value
            };
            let value = http::HeaderValue::from_bytes(raw)
                .map_err(|_| format!("{path}[{i}].value: not a header value"))?;
            Ok((name, value))
        })
        .collect()
}

pub(super) fn envoy_grpc(
    g: &envoy_types::pb::envoy::config::core::v3::GrpcService,
    path: &str,
    default_timeout: Duration,
) -> Result<GrpcTarget> {
    use envoy_types::pb::envoy::config::core::v3::grpc_service::TargetSpecifier;
    let Some(TargetSpecifier::EnvoyGrpc(e)) = &g.target_specifier else {
        return Err(format!(
            "{path}: an envoy_grpc is required (google_grpc is not supported)"
        ));
    };
    if e.cluster_name.is_empty() {
        return Err(format!("{path}.envoy_grpc.cluster_name: required"));
    }
    Ok(GrpcTarget {
        cluster: e.cluster_name.clone(),
        authority: if e.authority.is_empty() {
            e.cluster_name.clone()
        } else {
            e.authority.clone()
        },
        timeout: g
            .timeout
            .as_ref()
            .map_or(default_timeout, super::compile::duration),
        metadata: headers_to_add(&g.initial_metadata, &format!("{path}.initial_metadata"))?,
    })
}
