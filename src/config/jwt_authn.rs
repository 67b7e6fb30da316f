//! Compiles `envoy.filters.http.jwt_authn` (`JwtAuthentication`) and its per-route
//! `PerRouteConfig`, refusing what Envoy refuses at load: a local key set that does not
//! parse, a requirement naming an unknown provider or requirement.
use std::{collections::BTreeMap, sync::Arc, time::Duration};

use envoy_types::pb::{
    envoy::extensions::filters::http::jwt_authn::v3::{
        JwtAuthentication, JwtProvider, JwtRequirement, PerRouteConfig, jwt_provider,
        jwt_requirement::RequiresType, per_route_config, requirement_rule,
    },
    google::protobuf::Any,
};
use http::HeaderName;

use super::{proto, route_config::string_matcher};
use crate::http::filters::jwt_authn::{
    JwtAuthnConfig, Keys, Location, PerRoute, Provider, Requirement, jwks::Jwks, remote::RemoteJwks,
};

type Result<T> = std::result::Result<T, String>;

pub const JWT_AUTHN: &str = "envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication";
pub const JWT_AUTHN_PER_ROUTE: &str = "envoy.extensions.filters.http.jwt_authn.v3.PerRouteConfig";

pub fn jwt_authn(any: &Any, path: &str) -> Result<JwtAuthnConfig> {
    let c: JwtAuthentication = proto::unpack(any).map_err(|e| format!("{path}: {e}"))?;
    if c.filter_state_rules.is_some() {
        return Err(format!("{path}.filter_state_rules: not supported"));
    }
    let mut providers = BTreeMap::new();
    for (name, p) in &c.providers {
        providers.insert(
            name.clone(),
            Arc::new(provider(name, p, &format!("{path}.providers[\"{name}\"]"))?),
        );
    }
    let mut requirement_map = BTreeMap::new();
    for (name, r) in &c.requirement_map {
        requirement_map.insert(
            name.clone(),
            requirement(
                r,
                &providers,
                &format!("{path}.requirement_map[\"{name}\"]"),
            )?,
        );
    }
    let mut rules = Vec::new();
    for (i, r) in c.rules.iter().enumerate() {
        let rpath = format!("{path}.rules[{i}]");
        let m = r
            .r#match
            .as_ref()
            .ok_or_else(|| format!("{rpath}.match: required"))?;
        let m = super::route_config::route_match(m, &format!("{rpath}.match"))?;
        let req = match &r.requirement_type {
            None => None,
            Some(requirement_rule::RequirementType::Requires(q)) => {
                Some(requirement(q, &providers, &format!("{rpath}.requires"))?)
            }
            Some(requirement_rule::RequirementType::RequirementName(n)) => Some(
                requirement_map
                    .get(n)
                    .cloned()
                    .ok_or_else(|| wrong_requirement(&rpath, n, &requirement_map))?,
            ),
        };
        rules.push((m, req));
    }
    Ok(JwtAuthnConfig {
        providers,
        rules,
        requirement_map,
        bypass_cors_preflight: c.bypass_cors_preflight,
        strip_failure_response: c.strip_failure_response,
        stat_prefix: c.stat_prefix,
    })
}

fn wrong_requirement(path: &str, name: &str, map: &BTreeMap<String, Requirement>) -> String {
    let names: Vec<&str> = map.keys().map(String::as_str).collect();
    format!(
        "{path}.requirement_name: Wrong requirement_name: {name}. It should be one of [{}]",
        names.join(",")
    )
}

fn header_name(name: &str, path: &str) -> Result<HeaderName> {
    HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
        .map_err(|_| format!("{path}: '{name}' is not a header name"))
}

fn provider(name: &str, p: &JwtProvider, path: &str) -> Result<Provider> {
    if p.jwt_cache_config.is_some() {
        return Err(format!("{path}.jwt_cache_config: not supported"));
    }
    if p.clear_route_cache {
        return Err(format!("{path}.clear_route_cache: not supported"));
    }
    let keys = match &p.jwks_source_specifier {
        Some(jwt_provider::JwksSourceSpecifier::LocalJwks(ds)) => {
            let bytes = super::tls::data(Some(ds), &format!("{path}.local_jwks"))?;
            let text = String::from_utf8_lossy(&bytes);
            let set = Jwks::parse(&text).map_err(|e| {
                format!("{path}.local_jwks: Provider '{name}' in jwt_authn config has invalid local jwks: {e}")
            })?;
            Keys::Local(Arc::new(set))
        }
        Some(jwt_provider::JwksSourceSpecifier::RemoteJwks(r)) => {
            let rpath = format!("{path}.remote_jwks");
            let http_uri = r
                .http_uri
                .as_ref()
                .ok_or_else(|| format!("{rpath}.http_uri: required"))?;
            let uri: http::Uri = http_uri.uri.parse().map_err(|_| {
                format!(
                    "{rpath}.http_uri.uri: Provider '{name}' has an invalid URI: '{}'",
                    http_uri.uri
                )
            })?;
            if uri.scheme().is_none() || uri.authority().is_none() {
                return Err(format!(
                    "{rpath}.http_uri.uri: Provider '{name}' has an invalid URI: '{}'",
                    http_uri.uri
                ));
            }
            let cluster = match &http_uri.http_upstream_type {
                Some(
                    envoy_types::pb::envoy::config::core::v3::http_uri::HttpUpstreamType::Cluster(
                        c,
                    ),
                ) if !c.is_empty() => c.clone(),
                _ => return Err(format!("{rpath}.http_uri.cluster: required")),
            };
            let timeout = http_uri
                .timeout
                .as_ref()
                .map(super::compile::duration)
                .ok_or_else(|| format!("{rpath}.http_uri.timeout: required"))?;
            let cache_duration = r
                .cache_duration
                .as_ref()
                .map(super::compile::duration)
                .unwrap_or(Duration::from_secs(600));
            if cache_duration < Duration::from_millis(1) {
                return Err(format!("{rpath}.cache_duration: must be at least 1ms"));
            }
            let async_refetch = r.async_fetch.as_ref().map(|a| {
                a.failed_refetch_duration
                    .as_ref()
                    .map(super::compile::duration)
                    .unwrap_or(Duration::from_secs(1))
            });
            let retries = r
                .retry_policy
                .as_ref()
                .map_or(0, |rp| rp.num_retries.as_ref().map_or(1, |n| n.value));
            Keys::Remote(Arc::new(RemoteJwks::new(
                uri,
                cluster,
                timeout,
                cache_duration,
                async_refetch,
                retries,
            )))
        }
        None => {
            return Err(format!(
                "{path}: one of local_jwks or remote_jwks is required"
            ));
        }
    };
    let mut locations = Vec::new();
    for (i, h) in p.from_headers.iter().enumerate() {
        if h.name.is_empty() {
            return Err(format!("{path}.from_headers[{i}].name: required"));
        }
        locations.push(Location::Header {
            name: header_name(&h.name, &format!("{path}.from_headers[{i}].name"))?,
            prefix: h.value_prefix.clone(),
        });
    }
    locations.extend(p.from_params.iter().cloned().map(Location::Param));
    locations.extend(p.from_cookies.iter().cloned().map(Location::Cookie));
    if locations.is_empty() {
        locations = Location::defaults();
    }
    let claim_to_headers = p
        .claim_to_headers
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let cpath = format!("{path}.claim_to_headers[{i}]");
            if c.claim_name.is_empty() {
                return Err(format!("{cpath}.claim_name: required"));
            }
            Ok((
                header_name(&c.header_name, &format!("{cpath}.header_name"))?,
                c.claim_name.split('.').map(str::to_owned).collect(),
            ))
        })
        .collect::<Result<_>>()?;
    let nonempty = |s: &str| (!s.is_empty()).then(|| s.to_owned());
    Ok(Provider {
        name: name.to_owned(),
        issuer: p.issuer.clone(),
        audiences: p.audiences.clone(),
        subjects: p
            .subjects
            .as_ref()
            .map(|m| string_matcher(m, &format!("{path}.subjects")))
            .transpose()?,
        locations,
        forward: p.forward,
        forward_payload_header: match p.forward_payload_header.as_str() {
            "" => None,
            h => Some(header_name(h, &format!("{path}.forward_payload_header"))?),
        },
        pad_forward_payload_header: p.pad_forward_payload_header,
        payload_in_metadata: nonempty(&p.payload_in_metadata),
        header_in_metadata: nonempty(&p.header_in_metadata),
        failed_status_in_metadata: nonempty(&p.failed_status_in_metadata),
        space_delimited_claims: p
            .normalize_payload_in_metadata
            .as_ref()
            .map(|n| n.space_delimited_claims.clone())
            .unwrap_or_default(),
        claim_to_headers,
        clock_skew: if p.clock_skew_seconds > 0 {
            u64::from(p.clock_skew_seconds)
        } else {
            60
        },
        require_expiration: p.require_expiration,
        max_lifetime: p.max_lifetime.as_ref().map(super::compile::duration),
        keys,
    })
}

fn requirement(
    r: &JwtRequirement,
    providers: &BTreeMap<String, Arc<Provider>>,
    path: &str,
) -> Result<Requirement> {
    let known = |name: &str, p: &str| -> Result<()> {
        if providers.contains_key(name) {
            Ok(())
        } else {
            Err(format!(
                "{p}: Required provider ['{name}'] is not configured."
            ))
        }
    };
    Ok(match &r.requires_type {
        None => Requirement::None,
        Some(RequiresType::ProviderName(n)) => {
            known(n, &format!("{path}.provider_name"))?;
            Requirement::Provider {
                name: n.clone(),
                audiences: None,
            }
        }
        Some(RequiresType::ProviderAndAudiences(pa)) => {
            known(
                &pa.provider_name,
                &format!("{path}.provider_and_audiences.provider_name"),
            )?;
            Requirement::Provider {
                name: pa.provider_name.clone(),
                audiences: Some(pa.audiences.clone()),
            }
        }
        Some(RequiresType::RequiresAny(list)) => {
            let lpath = format!("{path}.requires_any.requirements");
            if list.requirements.len() < 2 {
                return Err(format!("{lpath}: at least two are required"));
            }
            let mut children = Vec::new();
            let (mut allow_missing, mut allow_missing_or_failed) = (false, false);
            for (i, c) in list.requirements.iter().enumerate() {
                match requirement(c, providers, &format!("{lpath}[{i}]"))? {
                    Requirement::AllowMissing => allow_missing = true,
                    Requirement::AllowMissingOrFailed => allow_missing_or_failed = true,
                    other => children.push(other),
                }
            }
            Requirement::Any {
                children,
                allow_missing,
                allow_missing_or_failed,
            }
        }
        Some(RequiresType::RequiresAll(list)) => {
            let lpath = format!("{path}.requires_all.requirements");
            if list.requirements.len() < 2 {
                return Err(format!("{lpath}: at least two are required"));
            }
            Requirement::All(
                list.requirements
                    .iter()
                    .enumerate()
                    .map(|(i, c)| requirement(c, providers, &format!("{lpath}[{i}]")))
                    .collect::<Result<_>>()?,
            )
        }
        Some(RequiresType::AllowMissing(_)) => Requirement::AllowMissing,
        Some(RequiresType::AllowMissingOrFailed(_)) => Requirement::AllowMissingOrFailed,
        Some(RequiresType::ExtractOnlyWithoutValidation(_)) => {
            return Err(format!(
                "{path}.extract_only_without_validation: not supported"
            ));
        }
    })
}

/// A `PerRouteConfig`.
pub fn per_route(any: &Any, path: &str) -> Result<PerRoute> {
    let r: PerRouteConfig = proto::unpack(any).map_err(|e| format!("{path}: {e}"))?;
    match r.requirement_specifier {
        Some(per_route_config::RequirementSpecifier::Disabled(true)) => Ok(PerRoute::Disabled),
        Some(per_route_config::RequirementSpecifier::RequirementName(n)) if !n.is_empty() => {
            Ok(PerRoute::RequirementName(n))
        }
        _ => Err(format!(
            "{path}: disabled: true or a requirement_name is required"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    fn compile(yaml: &str) -> Result<JwtAuthnConfig> {
        let c: JwtAuthentication = proto::from_yaml_for_tests(yaml);
        let any = Any {
            type_url: format!("type.googleapis.com/{JWT_AUTHN}"),
            value: c.encode_to_vec(),
        };
        jwt_authn(&any, "f")
    }

    #[test]
    fn refuses_what_envoy_refuses_at_load() {
        let e = compile(
            r#"{"providers": {"p": {"issuer": "i", "local_jwks": {"inline_string": "{}"}}}}"#,
        )
        .unwrap_err();
        assert_eq!(
            e,
            "f.providers[\"p\"].local_jwks: Provider 'p' in jwt_authn config has invalid local jwks: Jwks does not have [keys] field"
        );
        let e = compile(
            r#"{"providers": {"p": {"local_jwks": {"inline_string": "{\"keys\":[{\"kty\":\"oct\",\"k\":\"c2VjcmV0\"}]}"}}},
                "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "q"}}]}"#,
        )
        .unwrap_err();
        assert_eq!(
            e,
            "f.rules[0].requires.provider_name: Required provider ['q'] is not configured."
        );
        let e = compile(
            r#"{"providers": {"p": {"remote_jwks": {"http_uri": {"uri": "nope", "cluster": "c", "timeout": "1s"}}}}}"#,
        )
        .unwrap_err();
        assert!(e.contains("Provider 'p' has an invalid URI: 'nope'"), "{e}");
        assert!(compile(
            r#"{"providers": {"p": {"remote_jwks": {"http_uri": {"uri": "http://k/j", "cluster": "c", "timeout": "1s"}}}}}"#
        )
        .is_ok());
    }
}
