//! Compiles an Envoy `RouteConfiguration` into the runtime [`RouteTable`]: virtual hosts,
//! route matches (path, headers, query parameters, gRPC, runtime fraction) and route
//! actions (cluster or weighted clusters, path and host rewrites, timeout), and header
//! mutations at every level. Errors name the field path and, for values Envoy would
//! also refuse, say why.
use std::{collections::HashSet, time::Duration};

use envoy_types::pb::envoy::{
    config::core::v3::{HeaderValueOption, RuntimeFractionalPercent, header_value_option},
    config::route::v3::{
        DirectResponseAction, HeaderMatcher as HeaderMatcherPb,
        QueryParameterMatcher as QueryParameterMatcherPb, RedirectAction, RouteConfiguration,
        WeightedCluster, header_matcher, query_parameter_matcher, redirect_action, route,
        route_action, route_match,
    },
    r#type::matcher::v3::{
        RegexMatchAndSubstitute, StringMatcher as StringMatcherPb, string_matcher,
    },
};

use super::{http_filters::per_filter, model::*};
use crate::{
    http::{
        header_mutation,
        matchers::{self, HeaderMatch, QueryMatch, StringMatch, StringMatcher},
    },
    telemetry::access_log::{self, Piece},
};

type Result<T> = std::result::Result<T, String>;

/// Compiles a route configuration. Cluster names are checked against `known` when
/// `validate_clusters` says so; its default is `validate_by_default` (Envoy: true for an
/// inline `route_config`, false for RDS).
pub fn route_table(
    rc: &RouteConfiguration,
    path: &str,
    known: &HashSet<String>,
    validate_by_default: bool,
) -> Result<RouteTable> {
    let validate = rc
        .validate_clusters
        .as_ref()
        .map_or(validate_by_default, |b| b.value);
    let clusters = validate.then_some(known);
    // Envoy's default limit on an inline direct response body: 4 KiB.
    let max_body = rc
        .max_direct_response_body_size_bytes
        .as_ref()
        .map_or(4096, |v| v.value as usize);
    let rc_mirrors = super::mirror::mirror_policies(&rc.request_mirror_policies, path)?;
    let mut seen = HashSet::new();
    let mut virtual_hosts = Vec::new();
    for (v, vh) in rc.virtual_hosts.iter().enumerate() {
        let vpath = format!("{path}.virtual_hosts[{v}]");
        if vh.domains.is_empty() {
            return Err(format!("{vpath}.domains: at least one domain is required"));
        }
        let mut domains = Vec::new();
        for d in &vh.domains {
            let d = d.to_ascii_lowercase();
            if !seen.insert(d.clone()) {
                return Err(format!(
                    "{vpath}.domains: only unique values for domains are permitted; \
                     '{d}' appears more than once"
                ));
            }
            domains.push(d);
        }
        // A route's retry policy replaces the virtual host's, as in Envoy.
        let vh_retry = vh
            .retry_policy
            .as_ref()
            .map(|p| super::retry::retry_policy(p, &format!("{vpath}.retry_policy")))
            .transpose()?
            .map(std::sync::Arc::new);
        // The most specific non-empty mirror policies apply, not merged (as Envoy).
        let vh_mirrors = super::mirror::mirror_policies(&vh.request_mirror_policies, &vpath)?;
        let vh_hedge = vh
            .hedge_policy
            .as_ref()
            .map(|h| super::retry::hedge_on_per_try_timeout(h, &format!("{vpath}.hedge_policy")))
            .transpose()?;
        let inherited = Inherited {
            hedge: vh_hedge,
            retry: vh_retry.as_ref(),
            mirrors: if vh_mirrors.is_empty() {
                &rc_mirrors
            } else {
                &vh_mirrors
            },
        };
        let mut routes = Vec::new();
        for (r, rt) in vh.routes.iter().enumerate() {
            routes.push(route(
                rt,
                &format!("{vpath}.routes[{r}]"),
                clusters,
                max_body,
                &inherited,
            )?);
        }
        virtual_hosts.push(VirtualHost {
            name: vh.name.clone(),
            domains,
            routes,
            headers: headers(
                &vpath,
                (&vh.request_headers_to_add, &vh.request_headers_to_remove),
                (&vh.response_headers_to_add, &vh.response_headers_to_remove),
            )?,
            per_filter: per_filter(&vh.typed_per_filter_config, &vpath)?,
            attempt_count_request: vh.include_request_attempt_count,
            attempt_count_response: vh.include_attempt_count_in_response,
            virtual_clusters: vh
                .virtual_clusters
                .iter()
                .enumerate()
                .map(|(i, vc)| virtual_cluster(vc, &format!("{vpath}.virtual_clusters[{i}]")))
                .collect::<Result<_>>()?,
        });
    }
    Ok(RouteTable {
        name: rc.name.clone(),
        virtual_hosts,
        headers: headers(
            path,
            (&rc.request_headers_to_add, &rc.request_headers_to_remove),
            (&rc.response_headers_to_add, &rc.response_headers_to_remove),
        )?,
        most_specific_wins: rc.most_specific_header_mutations_wins,
        per_filter: per_filter(&rc.typed_per_filter_config, path)?,
        ignore_port_in_host_matching: rc.ignore_port_in_host_matching,
    })
}

/// What a route takes from its virtual host (or route configuration) when it sets
/// nothing itself.
struct Inherited<'a> {
    /// The virtual host's `hedge_policy.hedge_on_per_try_timeout`, if it has one.
    hedge: Option<bool>,
    retry: Option<&'a std::sync::Arc<crate::http::retry::RetryPolicy>>,
    mirrors: &'a [crate::http::mirror::MirrorPolicy],
}

fn route(
    rt: &envoy_types::pb::envoy::config::route::v3::Route,
    path: &str,
    clusters: Option<&HashSet<String>>,
    max_body: usize,
    inherited: &Inherited<'_>,
) -> Result<Route> {
    // `decorator` names the request's span (when the connection manager traces).
    let decorator = match &rt.decorator {
        Some(d) if d.operation.is_empty() => {
            return Err(format!("{path}.decorator.operation: required"));
        }
        Some(d) => Some(super::tracing::Decorator {
            operation: d.operation.clone(),
            propagate: d
                .propagate
                .as_ref()
                .is_none_or(|b| b.value)
                .then(|| http::HeaderValue::from_str(&d.operation).ok())
                .flatten(),
        }),
        None => None,
    };
    let m = rt
        .r#match
        .as_ref()
        .ok_or_else(|| format!("{path}.match: required"))?;
    let matcher = route_match(m, &format!("{path}.match"))?;
    let action = match &rt.action {
        Some(route::Action::Route(a)) => {
            let mut f = forward(a, &format!("{path}.route"), clusters)?;
            if f.retry.is_none() {
                f.retry = inherited.retry.cloned();
            }
            if f.mirrors.is_empty() {
                f.mirrors = inherited.mirrors.to_vec();
            }
            // The route's hedge policy, else its virtual host's, applies to whichever
            // retry policy the route ends up with.
            let hedge = match &a.hedge_policy {
                Some(h) => Some(super::retry::hedge_on_per_try_timeout(
                    h,
                    &format!("{path}.route.hedge_policy"),
                )?),
                None => inherited.hedge,
            };
            if let (Some(hedge), Some(retry)) = (hedge, f.retry.as_mut())
                && hedge != retry.hedge_on_per_try_timeout
            {
                std::sync::Arc::make_mut(retry).hedge_on_per_try_timeout = hedge;
            }
            RouteAction::Forward(f)
        }
        Some(route::Action::Redirect(r)) => {
            RouteAction::Redirect(redirect(r, &format!("{path}.redirect"))?)
        }
        Some(route::Action::DirectResponse(d)) => {
            RouteAction::Direct(direct(d, &format!("{path}.direct_response"), max_body)?)
        }
        _ => {
            return Err(format!(
                "{path}: one of route, redirect or direct_response is required"
            ));
        }
    };
    Ok(Route {
        name: rt.name.clone(),
        decorator,
        matcher,
        action,
        headers: headers(
            path,
            (&rt.request_headers_to_add, &rt.request_headers_to_remove),
            (&rt.response_headers_to_add, &rt.response_headers_to_remove),
        )?,
        per_filter: per_filter(&rt.typed_per_filter_config, path)?,
    })
}

fn forward(
    action: &envoy_types::pb::envoy::config::route::v3::RouteAction,
    apath: &str,
    clusters: Option<&HashSet<String>>,
) -> Result<Forward> {
    let cluster = match &action.cluster_specifier {
        Some(route_action::ClusterSpecifier::Cluster(c)) => ClusterSpec::Single(c.clone()),
        Some(route_action::ClusterSpecifier::ClusterHeader(h)) => {
            if http::HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes()).is_err() {
                return Err(format!(
                    "{apath}.cluster_header: '{h}' is not a header name"
                ));
            }
            ClusterSpec::Header(h.to_ascii_lowercase())
        }
        Some(route_action::ClusterSpecifier::WeightedClusters(w)) => {
            weighted(w, &format!("{apath}.weighted_clusters"))?
        }
        _ => return Err(format!("{apath}.cluster: required")),
    };
    for (i, name) in cluster.names().into_iter().enumerate() {
        if clusters.is_some_and(|known| !known.contains(name)) {
            let field = match cluster {
                ClusterSpec::Weighted(_) => format!("weighted_clusters.clusters[{i}].name"),
                _ => "cluster".to_owned(),
            };
            return Err(format!("{apath}.{field}: unknown cluster '{name}'"));
        }
    }
    let timeout = match &action.timeout {
        None => Some(Duration::from_secs(15)),
        Some(d) if d.seconds == 0 && d.nanos == 0 => None,
        Some(d) => Some(super::compile::duration(d)),
    };
    let mut rewrite = Rewrite {
        path: path_rewrite(&action.prefix_rewrite, action.regex_rewrite.as_ref(), apath)?,
        ..Rewrite::default()
    };
    match &action.host_rewrite_specifier {
        Some(route_action::HostRewriteSpecifier::HostRewriteLiteral(h)) => {
            rewrite.host = Some(h.clone());
        }
        Some(route_action::HostRewriteSpecifier::AutoHostRewrite(b)) => {
            rewrite.auto_host = b.value;
        }
        Some(route_action::HostRewriteSpecifier::HostRewriteHeader(h)) => {
            rewrite.host_from_header = Some(
                http::HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes()).map_err(|_| {
                    format!("{apath}.host_rewrite_header: '{h}' is not a header name")
                })?,
            );
        }
        _ => {}
    }
    let upgrades = action
        .upgrade_configs
        .iter()
        .map(|u| {
            (
                u.upgrade_type.to_ascii_lowercase(),
                u.enabled.as_ref().is_none_or(|b| b.value),
            )
        })
        .collect();
    let retry = action
        .retry_policy
        .as_ref()
        .map(|p| super::retry::retry_policy(p, &format!("{apath}.retry_policy")))
        .transpose()?
        .map(std::sync::Arc::new);
    Ok(Forward {
        // `0s` is kept: it turns the connection manager's maximum off for the route.
        max_stream_duration: action
            .max_stream_duration
            .as_ref()
            .and_then(|m| m.max_stream_duration.as_ref())
            .map(super::compile::duration),
        mirrors: super::mirror::mirror_policies(&action.request_mirror_policies, apath)?,
        hash_policy: hash_policy(&action.hash_policy, apath)?,
        retry,
        grpc_timeout: grpc_timeout(action, apath)?,
        cluster,
        rewrite,
        timeout,
        upgrades,
        // `0s` is kept: it turns the connection manager's stream idle timeout off.
        idle_timeout: action.idle_timeout.as_ref().map(super::compile::duration),
    })
}

/// `max_grpc_timeout` / `grpc_timeout_offset` (legacy, what istiod sends), else
/// `max_stream_duration.grpc_timeout_header_max` / `_offset`.
#[allow(deprecated)]
fn grpc_timeout(
    action: &envoy_types::pb::envoy::config::route::v3::RouteAction,
    apath: &str,
) -> Result<Option<GrpcTimeout>> {
    let dur = |d: &envoy_types::pb::google::protobuf::Duration| {
        Some(super::compile::duration(d)).filter(|d| !d.is_zero())
    };
    if let Some(max) = &action.max_grpc_timeout {
        return Ok(Some(GrpcTimeout {
            max: dur(max),
            offset: action
                .grpc_timeout_offset
                .as_ref()
                .and_then(dur)
                .unwrap_or_default(),
        }));
    }
    if action.grpc_timeout_offset.is_some() {
        return Err(format!(
            "{apath}.grpc_timeout_offset: only with max_grpc_timeout"
        ));
    }
    Ok(action.max_stream_duration.as_ref().and_then(|m| {
        m.grpc_timeout_header_max.as_ref().map(|max| GrpcTimeout {
            max: dur(max),
            offset: m
                .grpc_timeout_header_offset
                .as_ref()
                .and_then(dur)
                .unwrap_or_default(),
        })
    }))
}

/// A route's `hash_policy` rules.
fn hash_policy(
    rules: &[route_action::HashPolicy],
    apath: &str,
) -> Result<Option<std::sync::Arc<crate::http::hash_policy::HashPolicy>>> {
    use crate::http::hash_policy::{CookieRule, HashPolicy, Key, Rule};
    use route_action::hash_policy::PolicySpecifier as P;
    if rules.is_empty() {
        return Ok(None);
    }
    let mut out = Vec::new();
    for (i, r) in rules.iter().enumerate() {
        let rpath = format!("{apath}.hash_policy[{i}]");
        let key = match &r.policy_specifier {
            Some(P::Header(h)) => {
                let name = h.header_name.to_ascii_lowercase();
                if !name.starts_with(':') && http::HeaderName::from_bytes(name.as_bytes()).is_err()
                {
                    return Err(format!(
                        "{rpath}.header.header_name: '{}' is not a header name",
                        h.header_name
                    ));
                }
                let rewrite = match &h.regex_rewrite {
                    Some(rr) => {
                        let pattern = rr.pattern.as_ref().ok_or_else(|| {
                            format!("{rpath}.header.regex_rewrite.pattern: required")
                        })?;
                        let re = regex::Regex::new(&pattern.regex).map_err(|e| {
                            format!(
                                "{rpath}.header.regex_rewrite.pattern.regex: invalid regex: {e}"
                            )
                        })?;
                        Some((re, re2_substitution(&rr.substitution)))
                    }
                    None => None,
                };
                Key::Header { name, rewrite }
            }
            Some(P::Cookie(c)) => {
                if c.name.is_empty() {
                    return Err(format!("{rpath}.cookie.name: required"));
                }
                Key::Cookie(CookieRule {
                    name: c.name.clone(),
                    ttl: c.ttl.as_ref().map(super::compile::duration),
                    path: c.path.clone(),
                    attributes: c
                        .attributes
                        .iter()
                        .map(|a| (a.name.clone(), a.value.clone()))
                        .collect(),
                })
            }
            Some(P::ConnectionProperties(c)) => {
                if !c.source_ip {
                    continue;
                }
                Key::SourceIp
            }
            Some(P::QueryParameter(q)) => {
                if q.name.is_empty() {
                    return Err(format!("{rpath}.query_parameter.name: required"));
                }
                Key::QueryParameter(q.name.clone())
            }
            Some(P::FilterState(_)) => Key::FilterState,
            None => {
                return Err(format!(
                    "{rpath}: one of header, cookie, connection_properties, query_parameter or filter_state is required"
                ));
            }
        };
        out.push(Rule {
            key,
            terminal: r.terminal,
        });
    }
    Ok(Some(std::sync::Arc::new(HashPolicy { rules: out })))
}

/// `prefix_rewrite` or `regex_rewrite` (not both), as routes and redirects have them.
fn path_rewrite(
    prefix: &str,
    regex: Option<&RegexMatchAndSubstitute>,
    apath: &str,
) -> Result<Option<PathRewrite>> {
    match (prefix.is_empty(), regex) {
        (true, None) => Ok(None),
        (false, None) => Ok(Some(PathRewrite::Prefix(prefix.to_owned()))),
        (false, Some(_)) => Err(format!(
            "{apath}: specify only one of prefix_rewrite or regex_rewrite"
        )),
        (true, Some(rr)) => {
            let rpath = format!("{apath}.regex_rewrite");
            let pattern = rr
                .pattern
                .as_ref()
                .ok_or_else(|| format!("{rpath}.pattern: required"))?;
            let pattern = regex::Regex::new(&pattern.regex)
                .map_err(|e| format!("{rpath}.pattern.regex: invalid regex: {e}"))?;
            Ok(Some(PathRewrite::Regex {
                pattern,
                substitution: re2_substitution(&rr.substitution),
            }))
        }
    }
}

fn redirect(r: &RedirectAction, path: &str) -> Result<Redirect> {
    use redirect_action::{
        PathRewriteSpecifier as P, RedirectResponseCode as C, SchemeRewriteSpecifier as S,
    };
    let scheme = match &r.scheme_rewrite_specifier {
        Some(S::HttpsRedirect(true)) => Some("https".to_owned()),
        Some(S::SchemeRedirect(s)) if !s.is_empty() => Some(s.to_ascii_lowercase()),
        _ => None,
    };
    let rewrite = |prefix: &str, regex| path_rewrite(prefix, regex, path);
    let redirect_path = match &r.path_rewrite_specifier {
        None => None,
        Some(P::PathRedirect(p)) => Some(RedirectPath::Replace(p.clone())),
        Some(P::PrefixRewrite(p)) => rewrite(p, None)?.map(RedirectPath::Rewrite),
        Some(P::RegexRewrite(rr)) => rewrite("", Some(rr))?.map(RedirectPath::Rewrite),
        Some(P::PathRewrite(_)) => return Err(format!("{path}.path_rewrite: not supported")),
    };
    let status = match C::try_from(r.response_code) {
        Ok(C::MovedPermanently) => 301,
        Ok(C::Found) => 302,
        Ok(C::SeeOther) => 303,
        Ok(C::TemporaryRedirect) => 307,
        Ok(C::PermanentRedirect) => 308,
        Err(_) => return Err(format!("{path}.response_code: unknown value")),
    };
    Ok(Redirect {
        scheme,
        host: (!r.host_redirect.is_empty()).then(|| r.host_redirect.clone()),
        port: (r.port_redirect != 0).then_some(r.port_redirect),
        path: redirect_path,
        strip_query: r.strip_query,
        status,
    })
}

fn direct(d: &DirectResponseAction, path: &str, max_body: usize) -> Result<DirectResponse> {
    use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
    if !(200..600).contains(&d.status) {
        return Err(format!("{path}.status: {} is not in [200, 600)", d.status));
    }
    let body = match d.body.as_ref().and_then(|b| b.specifier.as_ref()) {
        None => None,
        Some(Specifier::InlineString(s)) => Some(s.clone()),
        Some(Specifier::InlineBytes(b)) => Some(
            String::from_utf8(b.clone())
                .map_err(|_| format!("{path}.body.inline_bytes: not UTF-8"))?,
        ),
        Some(Specifier::Filename(f)) => Some(
            std::fs::read_to_string(f).map_err(|e| format!("{path}.body.filename: {f}: {e}"))?,
        ),
        Some(Specifier::EnvironmentVariable(v)) => Some(
            std::env::var(v)
                .map_err(|_| format!("{path}.body.environment_variable: {v} is not set"))?,
        ),
    };
    if let Some(b) = &body
        && b.len() > max_body
    {
        return Err(format!(
            "{path}.body: response body size is {} bytes; maximum is {max_body}",
            b.len()
        ));
    }
    Ok(DirectResponse {
        status: d.status as u16,
        body: body.filter(|b| !b.is_empty()),
    })
}

pub(super) fn route_match(
    m: &envoy_types::pb::envoy::config::route::v3::RouteMatch,
    path: &str,
) -> Result<RouteMatch> {
    let path_match = match &m.path_specifier {
        Some(route_match::PathSpecifier::Prefix(p)) => PathMatch::Prefix(p.clone()),
        Some(route_match::PathSpecifier::Path(p)) => PathMatch::Path(p.clone()),
        Some(route_match::PathSpecifier::SafeRegex(r)) => PathMatch::Regex(
            matchers::full_match_regex(&r.regex)
                .map_err(|e| format!("{path}.safe_regex.regex: {e}"))?,
        ),
        Some(route_match::PathSpecifier::PathSeparatedPrefix(p)) => {
            if p.ends_with('/') || p.contains(['?', '#']) {
                return Err(format!(
                    "{path}.path_separated_prefix: '{p}' must not end with '/' or contain '?' or '#'"
                ));
            }
            PathMatch::SeparatedPrefix(p.clone())
        }
        _ => {
            return Err(format!(
                "{path}: one of prefix, path, safe_regex or path_separated_prefix is required"
            ));
        }
    };
    let headers = m
        .headers
        .iter()
        .enumerate()
        .map(|(i, h)| header_matcher(h, &format!("{path}.headers[{i}]")))
        .collect::<Result<_>>()?;
    let query_parameters = m
        .query_parameters
        .iter()
        .enumerate()
        .map(|(i, q)| query_matcher(q, &format!("{path}.query_parameters[{i}]")))
        .collect::<Result<_>>()?;
    Ok(RouteMatch {
        path: path_match,
        case_sensitive: m.case_sensitive.as_ref().is_none_or(|b| b.value),
        headers,
        query_parameters,
        grpc: m.grpc.is_some(),
        per_million: m
            .runtime_fraction
            .as_ref()
            .map(|f| per_million(f, &format!("{path}.runtime_fraction")))
            .transpose()?,
    })
}

fn per_million(f: &RuntimeFractionalPercent, path: &str) -> Result<u32> {
    let p = f
        .default_value
        .as_ref()
        .ok_or_else(|| format!("{path}.default_value: required"))?;
    super::http_filters::per_million(Some(p), &format!("{path}.default_value"))
}

/// A `VirtualCluster`: a name and the header matchers (all must match) that put a
/// request in it. Envoy requires both.
fn virtual_cluster(
    vc: &envoy_types::pb::envoy::config::route::v3::VirtualCluster,
    path: &str,
) -> Result<VirtualCluster> {
    if vc.name.is_empty() {
        return Err(format!("{path}.name: required"));
    }
    if vc.headers.is_empty() {
        return Err(format!(
            "{path}.headers: virtual clusters must define 'headers'"
        ));
    }
    Ok(VirtualCluster {
        name: vc.name.clone(),
        headers: vc
            .headers
            .iter()
            .enumerate()
            .map(|(i, h)| header_matcher(h, &format!("{path}.headers[{i}]")))
            .collect::<Result<_>>()?,
    })
}

#[allow(deprecated)]
pub fn header_matcher(h: &HeaderMatcherPb, path: &str) -> Result<matchers::HeaderMatcher> {
    use header_matcher::HeaderMatchSpecifier as S;
    if h.name.is_empty() {
        return Err(format!("{path}.name: required"));
    }
    let string = |kind: StringMatch| {
        HeaderMatch::String(StringMatcher {
            kind,
            ignore_case: false,
        })
    };
    let kind = match &h.header_match_specifier {
        None => HeaderMatch::Any,
        Some(S::ExactMatch(v)) => string(StringMatch::Exact(v.clone())),
        Some(S::PrefixMatch(v)) => string(StringMatch::Prefix(v.clone())),
        Some(S::SuffixMatch(v)) => string(StringMatch::Suffix(v.clone())),
        Some(S::ContainsMatch(v)) => string(StringMatch::Contains(v.clone())),
        Some(S::SafeRegexMatch(r)) => string(StringMatch::Regex(
            matchers::full_match_regex(&r.regex)
                .map_err(|e| format!("{path}.safe_regex_match.regex: {e}"))?,
        )),
        Some(S::RangeMatch(r)) => HeaderMatch::Range {
            start: r.start,
            end: r.end,
        },
        Some(S::PresentMatch(p)) => HeaderMatch::Present(*p),
        Some(S::StringMatch(s)) => {
            HeaderMatch::String(string_matcher(s, &format!("{path}.string_match"))?)
        }
    };
    Ok(matchers::HeaderMatcher {
        name: h.name.to_ascii_lowercase(),
        kind,
        invert: h.invert_match,
        treat_missing_as_empty: h.treat_missing_header_as_empty,
    })
}

fn query_matcher(
    q: &QueryParameterMatcherPb,
    path: &str,
) -> Result<matchers::QueryParameterMatcher> {
    use query_parameter_matcher::QueryParameterMatchSpecifier as S;
    if q.name.is_empty() {
        return Err(format!("{path}.name: required"));
    }
    let kind = match &q.query_parameter_match_specifier {
        Some(S::StringMatch(s)) => {
            QueryMatch::Value(string_matcher(s, &format!("{path}.string_match"))?)
        }
        Some(S::PresentMatch(true)) | None => QueryMatch::Present,
        Some(S::PresentMatch(false)) => QueryMatch::Absent,
    };
    Ok(matchers::QueryParameterMatcher {
        name: q.name.clone(),
        kind,
    })
}

/// Compiles a `StringMatcher`; patterns are lowered here when `ignore_case` is set.
pub fn string_matcher(s: &StringMatcherPb, path: &str) -> Result<StringMatcher> {
    use string_matcher::MatchPattern as P;
    let pattern = s.match_pattern.as_ref().map(|p| match p {
        P::Exact(v) => Pattern::Exact(v),
        P::Prefix(v) => Pattern::Prefix(v),
        P::Suffix(v) => Pattern::Suffix(v),
        P::Contains(v) => Pattern::Contains(v),
        P::SafeRegex(r) => Pattern::Regex(&r.regex),
        P::Custom(_) => Pattern::Custom,
    });
    compile_string_matcher(pattern, s.ignore_case, path)
}

/// A string matcher's pattern, from either `envoy.type.matcher.v3` or
/// `xds.type.matcher.v3` (the same shape in two packages).
pub(super) enum Pattern<'a> {
    Exact(&'a str),
    Prefix(&'a str),
    Suffix(&'a str),
    Contains(&'a str),
    Regex(&'a str),
    Custom,
}

pub(super) fn compile_string_matcher(
    pattern: Option<Pattern<'_>>,
    ic: bool,
    path: &str,
) -> Result<StringMatcher> {
    let lower = |v: &str| {
        if ic {
            v.to_ascii_lowercase()
        } else {
            v.to_owned()
        }
    };
    let kind = match pattern {
        Some(Pattern::Exact(v)) => StringMatch::Exact(lower(v)),
        Some(Pattern::Prefix(v)) => StringMatch::Prefix(lower(v)),
        Some(Pattern::Suffix(v)) => StringMatch::Suffix(lower(v)),
        Some(Pattern::Contains(v)) => StringMatch::Contains(lower(v)),
        Some(Pattern::Regex(r)) => StringMatch::Regex(
            matchers::full_match_regex(r).map_err(|e| format!("{path}.safe_regex.regex: {e}"))?,
        ),
        Some(Pattern::Custom) => return Err(format!("{path}.custom: not supported")),
        None => return Err(format!("{path}: a match pattern is required")),
    };
    Ok(StringMatcher {
        kind,
        ignore_case: ic,
    })
}

/// Weighted clusters. The deprecated `total_weight` is accepted and, as in Envoy 1.40,
/// plays no part: the split is over the sum of the weights.
fn weighted(w: &WeightedCluster, path: &str) -> Result<ClusterSpec> {
    if w.clusters.is_empty() {
        return Err(format!("{path}.clusters: at least one cluster is required"));
    }
    let mut out = Vec::new();
    let mut sum: u64 = 0;
    for (i, c) in w.clusters.iter().enumerate() {
        let cpath = format!("{path}.clusters[{i}]");
        if c.name.is_empty() {
            return Err(format!("{cpath}.name: required"));
        }
        let weight = c.weight.as_ref().map_or(0, |v| v.value);
        sum += u64::from(weight);
        out.push(WeightedTarget {
            name: c.name.clone(),
            weight,
            headers: headers(
                &cpath,
                (&c.request_headers_to_add, &c.request_headers_to_remove),
                (&c.response_headers_to_add, &c.response_headers_to_remove),
            )?,
        });
    }
    if sum == 0 {
        return Err(format!(
            "{path}: the sum of the weights must be greater than 0"
        ));
    }
    if sum > u64::from(u32::MAX) {
        return Err(format!(
            "{path}: the sum of the weights must fit in 32 bits"
        ));
    }
    Ok(ClusterSpec::Weighted(out))
}

type HeaderFields<'a> = (&'a [HeaderValueOption], &'a [String]);

/// One level's `request_headers_to_add`/`_remove` and `response_headers_to_add`/`_remove`.
fn headers(path: &str, request: HeaderFields<'_>, response: HeaderFields<'_>) -> Result<Headers> {
    Ok(Headers {
        request: mutations(path, "request", request)?,
        response: mutations(path, "response", response)?,
    })
}

fn mutations(
    path: &str,
    direction: &str,
    (to_add, to_remove): HeaderFields<'_>,
) -> Result<HeaderMutations> {
    use header_mutation::{AppendAction, HeaderAdd, Value};
    use header_value_option::HeaderAppendAction as A;
    let name = |raw: &str, field: &str, verb: &str| -> Result<http::HeaderName> {
        let lower = raw.to_ascii_lowercase();
        if lower.starts_with(':') || lower == "host" {
            return Err(format!(
                "{field}: '{raw}': :-prefixed or host headers may not be {verb}"
            ));
        }
        http::HeaderName::from_bytes(lower.as_bytes())
            .map_err(|_| format!("{field}: '{raw}' is not a valid header name"))
    };
    let mut out = HeaderMutations::default();
    for (i, r) in to_remove.iter().enumerate() {
        let field = format!("{path}.{direction}_headers_to_remove[{i}]");
        out.remove.push(name(r, &field, "removed")?);
    }
    for (i, opt) in to_add.iter().enumerate() {
        let field = format!("{path}.{direction}_headers_to_add[{i}]");
        let h = opt
            .header
            .as_ref()
            .ok_or_else(|| format!("{field}.header: required"))?;
        let header_name = name(&h.key, &format!("{field}.header.key"), "modified")?;
        let raw = if h.value.is_empty() && !h.raw_value.is_empty() {
            String::from_utf8(h.raw_value.clone())
                .map_err(|_| format!("{field}.header.raw_value: not UTF-8"))?
        } else {
            h.value.clone()
        };
        let pieces = access_log::parse(&raw).map_err(|e| format!("{field}.header.value: {e}"))?;
        let value = match pieces.as_slice() {
            [] => Value::Static(http::HeaderValue::from_static("")),
            [Piece::Literal(s)] => Value::Static(
                http::HeaderValue::from_str(s)
                    .map_err(|_| format!("{field}.header.value: not a valid header value"))?,
            ),
            _ => Value::Formatted(pieces),
        };
        #[allow(deprecated)]
        let action = match (
            opt.append.as_ref().map(|b| b.value),
            A::try_from(opt.append_action),
        ) {
            (Some(true), _) => AppendAction::Append,
            (Some(false), _) => AppendAction::Overwrite,
            (None, Ok(A::AppendIfExistsOrAdd)) => AppendAction::Append,
            (None, Ok(A::AddIfAbsent)) => AppendAction::AddIfAbsent,
            (None, Ok(A::OverwriteIfExistsOrAdd)) => AppendAction::Overwrite,
            (None, Ok(A::OverwriteIfExists)) => AppendAction::OverwriteIfExists,
            (None, Err(_)) => return Err(format!("{field}.append_action: unknown value")),
        };
        out.add.push(HeaderAdd {
            name: header_name,
            value,
            action,
            keep_empty: opt.keep_empty_value,
        });
    }
    Ok(out)
}

/// RE2 substitutions name groups `\1`; the regex crate's replacement syntax is `${1}`
/// (and `$` is literal in RE2).
fn re2_substitution(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.peek() {
                Some(d) if d.is_ascii_digit() => {
                    out.push_str(&format!("${{{d}}}"));
                    chars.next();
                }
                Some('\\') => {
                    out.push('\\');
                    chars.next();
                }
                _ => out.push('\\'),
            },
            '$' => out.push_str("$$"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn re2_substitutions_become_regex_replacements() {
        assert_eq!(re2_substitution(r"/\1/x/\2"), "/${1}/x/${2}");
        assert_eq!(re2_substitution("/a$b"), "/a$$b");
        assert_eq!(re2_substitution(r"\\1"), r"\1");
    }

    #[test]
    fn a_virtual_cluster_needs_a_name_and_headers() {
        use envoy_types::pb::envoy::config::route::v3::VirtualCluster as Pb;
        let vc = |name: &str, headers: Vec<HeaderMatcherPb>| Pb {
            name: name.into(),
            headers,
        };
        let get = HeaderMatcherPb {
            name: ":method".into(),
            header_match_specifier: Some(header_matcher::HeaderMatchSpecifier::PresentMatch(true)),
            ..Default::default()
        };
        assert_eq!(
            virtual_cluster(&vc("v", vec![]), "p").unwrap_err(),
            "p.headers: virtual clusters must define 'headers'"
        );
        assert_eq!(
            virtual_cluster(&vc("", vec![get.clone()]), "p").unwrap_err(),
            "p.name: required"
        );
        let ok = virtual_cluster(&vc("v", vec![get]), "p").unwrap();
        assert_eq!((ok.name.as_str(), ok.headers.len()), ("v", 1));
    }
}
