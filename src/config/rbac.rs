//! Compiles `envoy.config.rbac.v3.RBAC` and the two RBAC filters' configs into
//! [`crate::rbac`]'s model. Matchers pilotfish cannot evaluate (CEL conditions,
//! extension matchers, filter state, sourced metadata) are rejected with their path.
use envoy_types::pb::envoy::config::rbac::v3::{
    Permission as PermissionPb, Policy as PolicyPb, Principal as PrincipalPb, Rbac as RbacPb,
    permission, principal, rbac,
};

use super::route_config::{header_matcher, string_matcher};
use crate::{
    net::cidr::Cidr,
    rbac::{Action, Permission, Policy, Principal, RbacConfig, Rules},
};

type Result<T> = std::result::Result<T, String>;

pub const NETWORK_RBAC: &str = "envoy.extensions.filters.network.rbac.v3.RBAC";
pub const HTTP_RBAC: &str = "envoy.extensions.filters.http.rbac.v3.RBAC";
pub const HTTP_RBAC_PER_ROUTE: &str = "envoy.extensions.filters.http.rbac.v3.RBACPerRoute";

pub fn rules(r: &RbacPb, path: &str) -> Result<Rules> {
    if r.audit_logging_options.is_some() {
        return Err(format!("{path}.audit_logging_options: not supported"));
    }
    let action = match rbac::Action::try_from(r.action) {
        Ok(rbac::Action::Allow) => Action::Allow,
        Ok(rbac::Action::Deny) => Action::Deny,
        Ok(rbac::Action::Log) => Action::Log,
        Err(_) => return Err(format!("{path}.action: unknown value {}", r.action)),
    };
    let mut policies = std::collections::BTreeMap::new();
    for (name, p) in &r.policies {
        policies.insert(
            name.clone(),
            policy(p, &format!("{path}.policies[\"{name}\"]"))?,
        );
    }
    Ok(Rules { action, policies })
}

fn policy(p: &PolicyPb, path: &str) -> Result<Policy> {
    if p.condition.is_some() || p.checked_condition.is_some() || p.cel_config.is_some() {
        return Err(format!(
            "{path}.condition: CEL conditions are not supported"
        ));
    }
    if p.permissions.is_empty() || p.principals.is_empty() {
        return Err(format!(
            "{path}: at least one permission and one principal are required"
        ));
    }
    Ok(Policy {
        permissions: p
            .permissions
            .iter()
            .enumerate()
            .map(|(i, x)| permission_of(x, &format!("{path}.permissions[{i}]")))
            .collect::<Result<_>>()?,
        principals: p
            .principals
            .iter()
            .enumerate()
            .map(|(i, x)| principal_of(x, &format!("{path}.principals[{i}]")))
            .collect::<Result<_>>()?,
    })
}

pub(super) fn cidr(
    c: &envoy_types::pb::envoy::config::core::v3::CidrRange,
    path: &str,
) -> Result<Cidr> {
    let ip = c.address_prefix.parse().map_err(|_| {
        format!(
            "{path}.address_prefix: '{}' is not an IP address",
            c.address_prefix
        )
    })?;
    Cidr::new(ip, c.prefix_len.as_ref().map_or(0, |l| l.value)).map_err(|e| format!("{path}: {e}"))
}

fn path_matcher(
    m: &envoy_types::pb::envoy::r#type::matcher::v3::PathMatcher,
    path: &str,
) -> Result<crate::http::matchers::StringMatcher> {
    use envoy_types::pb::envoy::r#type::matcher::v3::path_matcher::Rule;
    match &m.rule {
        Some(Rule::Path(s)) => string_matcher(s, &format!("{path}.path")),
        None => Err(format!("{path}.path: required")),
    }
}

#[allow(deprecated)]
fn permission_of(p: &PermissionPb, path: &str) -> Result<Permission> {
    use permission::Rule as R;
    let set = |rules: &[PermissionPb], name: &str| -> Result<Vec<Permission>> {
        if rules.is_empty() {
            return Err(format!("{path}.{name}.rules: at least one is required"));
        }
        rules
            .iter()
            .enumerate()
            .map(|(i, r)| permission_of(r, &format!("{path}.{name}.rules[{i}]")))
            .collect()
    };
    Ok(match &p.rule {
        Some(R::AndRules(s)) => Permission::And(set(&s.rules, "and_rules")?),
        Some(R::OrRules(s)) => Permission::Or(set(&s.rules, "or_rules")?),
        Some(R::Any(true)) => Permission::Any,
        Some(R::Header(h)) => Permission::Header(header_matcher(h, &format!("{path}.header"))?),
        Some(R::UrlPath(m)) => Permission::UrlPath(path_matcher(m, &format!("{path}.url_path"))?),
        Some(R::DestinationIp(c)) => {
            Permission::DestinationIp(cidr(c, &format!("{path}.destination_ip"))?)
        }
        Some(R::DestinationPort(port)) if *port <= 65535 => {
            Permission::DestinationPort(*port as u16)
        }
        Some(R::DestinationPortRange(r)) if r.start >= 0 && r.end <= 65536 && r.start <= r.end => {
            Permission::DestinationPortRange(r.start as u32, r.end as u32)
        }
        Some(R::NotRule(n)) => {
            Permission::Not(Box::new(permission_of(n, &format!("{path}.not_rule"))?))
        }
        Some(R::RequestedServerName(m)) => Permission::RequestedServerName(string_matcher(
            m,
            &format!("{path}.requested_server_name"),
        )?),
        Some(R::Metadata(m)) => {
            Permission::Metadata(metadata_matcher(m, &format!("{path}.metadata"))?)
        }
        Some(R::Matcher(_)) => return Err(format!("{path}.matcher: not supported")),
        Some(R::UriTemplate(_)) => return Err(format!("{path}.uri_template: not supported")),
        Some(R::SourcedMetadata(_)) => {
            return Err(format!("{path}.sourced_metadata: not supported"));
        }
        Some(R::Any(false)) | None => return Err(format!("{path}: a rule is required")),
        Some(R::DestinationPort(_)) | Some(R::DestinationPortRange(_)) => {
            return Err(format!("{path}: not a port or port range"));
        }
    })
}

fn principal_of(p: &PrincipalPb, path: &str) -> Result<Principal> {
    use principal::Identifier as I;
    let set = |ids: &[PrincipalPb], name: &str| -> Result<Vec<Principal>> {
        if ids.is_empty() {
            return Err(format!("{path}.{name}.ids: at least one is required"));
        }
        ids.iter()
            .enumerate()
            .map(|(i, r)| principal_of(r, &format!("{path}.{name}.ids[{i}]")))
            .collect()
    };
    #[allow(deprecated)]
    Ok(match &p.identifier {
        Some(I::AndIds(s)) => Principal::And(set(&s.ids, "and_ids")?),
        Some(I::OrIds(s)) => Principal::Or(set(&s.ids, "or_ids")?),
        Some(I::Any(true)) => Principal::Any,
        Some(I::Authenticated(a)) => Principal::Authenticated(
            a.principal_name
                .as_ref()
                .map(|m| string_matcher(m, &format!("{path}.authenticated.principal_name")))
                .transpose()?,
        ),
        Some(I::SourceIp(c)) => Principal::DirectRemoteIp(cidr(c, &format!("{path}.source_ip"))?),
        Some(I::DirectRemoteIp(c)) => {
            Principal::DirectRemoteIp(cidr(c, &format!("{path}.direct_remote_ip"))?)
        }
        Some(I::RemoteIp(c)) => Principal::RemoteIp(cidr(c, &format!("{path}.remote_ip"))?),
        Some(I::Header(h)) => Principal::Header(header_matcher(h, &format!("{path}.header"))?),
        Some(I::UrlPath(m)) => Principal::UrlPath(path_matcher(m, &format!("{path}.url_path"))?),
        Some(I::NotId(n)) => Principal::Not(Box::new(principal_of(n, &format!("{path}.not_id"))?)),
        Some(I::Metadata(m)) => {
            Principal::Metadata(metadata_matcher(m, &format!("{path}.metadata"))?)
        }
        Some(I::FilterState(_)) => return Err(format!("{path}.filter_state: not supported")),
        Some(I::SourcedMetadata(_)) => {
            return Err(format!("{path}.sourced_metadata: not supported"));
        }
        Some(I::Custom(_)) => return Err(format!("{path}.custom: not supported")),
        Some(I::Any(false)) | None => return Err(format!("{path}: an identifier is required")),
    })
}

/// `envoy.filters.network.rbac`, with its required `stat_prefix`.
pub fn network(
    any: &envoy_types::pb::google::protobuf::Any,
    path: &str,
) -> Result<(RbacConfig, String)> {
    use envoy_types::pb::envoy::extensions::filters::network::rbac::v3::Rbac as NetRbac;
    let r: NetRbac = super::proto::unpack(any).map_err(|e| format!("{path}: {e}"))?;
    if r.matcher.is_some() || r.shadow_matcher.is_some() {
        return Err(format!("{path}.matcher: not supported"));
    }
    if r.delay_deny.is_some() {
        return Err(format!("{path}.delay_deny: not supported"));
    }
    if r.stat_prefix.is_empty() {
        return Err(format!("{path}.stat_prefix: required"));
    }
    if r.enforcement_type != 0 {
        return Err(format!(
            "{path}.enforcement_type: only ONE_TIME_ON_FIRST_BYTE is supported"
        ));
    }
    let config = both(
        (r.rules.as_ref(), ""),
        (r.shadow_rules.as_ref(), &r.shadow_rules_stat_prefix),
        path,
    )?;
    Ok((config, r.stat_prefix))
}

/// `envoy.filters.http.rbac`.
pub fn http(
    r: &envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac,
    path: &str,
) -> Result<RbacConfig> {
    if r.matcher.is_some() || r.shadow_matcher.is_some() {
        return Err(format!("{path}.matcher: not supported"));
    }
    if r.track_per_rule_stats {
        return Err(format!("{path}.track_per_rule_stats: not supported"));
    }
    both(
        (r.rules.as_ref(), &r.rules_stat_prefix),
        (r.shadow_rules.as_ref(), &r.shadow_rules_stat_prefix),
        path,
    )
}

/// The enforced and shadow rules of either filter, with their stat prefixes.
fn both(
    (enforced, enforced_prefix): (Option<&RbacPb>, &str),
    (shadow, shadow_prefix): (Option<&RbacPb>, &str),
    path: &str,
) -> Result<RbacConfig> {
    Ok(RbacConfig {
        rules: enforced
            .map(|x| rules(x, &format!("{path}.rules")))
            .transpose()?,
        shadow: shadow
            .map(|x| rules(x, &format!("{path}.shadow_rules")))
            .transpose()?,
        rules_stat_prefix: enforced_prefix.to_owned(),
        shadow_rules_stat_prefix: shadow_prefix.to_owned(),
    })
}

/// A `MetadataMatcher` on dynamic metadata (RBAC's `metadata`, ext_authz's
/// `filter_enabled_metadata`).
pub fn metadata_matcher(
    m: &envoy_types::pb::envoy::r#type::matcher::v3::MetadataMatcher,
    path: &str,
) -> Result<crate::http::metadata_matcher::MetadataMatcher> {
    use envoy_types::pb::envoy::r#type::matcher::v3::metadata_matcher::path_segment::Segment;
    if m.filter.is_empty() {
        return Err(format!("{path}.filter: required"));
    }
    let keys = m
        .path
        .iter()
        .enumerate()
        .map(|(i, seg)| match &seg.segment {
            Some(Segment::Key(k)) if !k.is_empty() => Ok(k.clone()),
            _ => Err(format!("{path}.path[{i}].key: required")),
        })
        .collect::<Result<Vec<_>>>()?;
    if keys.is_empty() {
        return Err(format!("{path}.path: at least one key is required"));
    }
    let value = m
        .value
        .as_ref()
        .ok_or_else(|| format!("{path}.value: required"))?;
    Ok(crate::http::metadata_matcher::MetadataMatcher {
        filter: m.filter.clone(),
        path: keys,
        value: value_matcher(value, &format!("{path}.value"))?,
        invert: m.invert,
    })
}

fn value_matcher(
    v: &envoy_types::pb::envoy::r#type::matcher::v3::ValueMatcher,
    path: &str,
) -> Result<crate::http::metadata_matcher::ValueMatcher> {
    use crate::http::metadata_matcher::{DoubleMatch, ValueMatcher};
    use envoy_types::pb::envoy::r#type::matcher::v3::{
        double_matcher, list_matcher, value_matcher::MatchPattern as P,
    };
    Ok(match &v.match_pattern {
        Some(P::NullMatch(_)) => ValueMatcher::Null,
        Some(P::DoubleMatch(d)) => ValueMatcher::Double(match &d.match_pattern {
            Some(double_matcher::MatchPattern::Range(r)) => DoubleMatch::Range(r.start, r.end),
            Some(double_matcher::MatchPattern::Exact(e)) => DoubleMatch::Exact(*e),
            None => return Err(format!("{path}.double_match: a range or exact is required")),
        }),
        Some(P::StringMatch(s)) => {
            ValueMatcher::String(string_matcher(s, &format!("{path}.string_match"))?)
        }
        Some(P::BoolMatch(b)) => ValueMatcher::Bool(*b),
        Some(P::PresentMatch(b)) => ValueMatcher::Present(*b),
        Some(P::ListMatch(l)) => match &l.match_pattern {
            Some(list_matcher::MatchPattern::OneOf(inner)) => ValueMatcher::ListOneOf(Box::new(
                value_matcher(inner, &format!("{path}.list_match.one_of"))?,
            )),
            None => return Err(format!("{path}.list_match.one_of: required")),
        },
        Some(P::OrMatch(o)) => {
            if o.value_matchers.len() < 2 {
                return Err(format!(
                    "{path}.or_match.value_matchers: at least two are required"
                ));
            }
            ValueMatcher::Or(
                o.value_matchers
                    .iter()
                    .enumerate()
                    .map(|(i, m)| value_matcher(m, &format!("{path}.or_match.value_matchers[{i}]")))
                    .collect::<Result<_>>()?,
            )
        }
        None => return Err(format!("{path}: a match pattern is required")),
    })
}
