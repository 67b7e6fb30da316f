//! Compiles a listener's `filter_chain_matcher` (`xds.type.matcher.v3.Matcher`) into
//! [`crate::listener::chain_matcher`]: network inputs, string and IP predicates, exact
//! and prefix maps, the `IPMatcher` range tree, and actions naming chains.
use std::collections::HashMap;

use envoy_types::pb::{
    google::protobuf::Any,
    xds::{
        core::v3::{CidrRange, TypedExtensionConfig},
        r#type::matcher::v3::{
            Matcher, StringMatcher as XdsStringMatcher,
            matcher::{
                MatcherType, OnMatch as OnMatchPb, matcher_list::predicate, matcher_tree::TreeType,
                on_match,
            },
            string_matcher,
        },
    },
};

use super::proto;
use crate::{
    http::matchers::StringMatcher,
    listener::chain_matcher::{ChainMatcher, Input, Kind, OnMatch, Predicate},
    net::cidr::Cidr,
};

type Result<T> = std::result::Result<T, String>;

const INPUTS: &str = "envoy.extensions.matching.common_inputs.network.v3.";
const IP_MATCHER: &str = "xds.type.matcher.v3.IPMatcher";
const IP_INPUT_MATCHER: &str = "envoy.extensions.matching.input_matchers.ip.v3.Ip";
const ACTION: &str = "google.protobuf.StringValue";

/// `xds.type.matcher.v3.IPMatcher` (envoy-types carries no struct for it).
#[derive(Clone, PartialEq, prost::Message)]
struct IpMatcherPb {
    #[prost(message, repeated, tag = "1")]
    range_matchers: Vec<IpRangeMatcherPb>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct IpRangeMatcherPb {
    #[prost(message, repeated, tag = "1")]
    ranges: Vec<CidrRange>,
    #[prost(message, optional, tag = "2")]
    on_match: Option<OnMatchPb>,
    #[prost(bool, tag = "3")]
    exclusive: bool,
}

/// The matcher; `chains` are the listener's chain names in order.
pub fn compile(m: &Matcher, chains: &[&str], path: &str) -> Result<ChainMatcher> {
    let on_no_match = m
        .on_no_match
        .as_ref()
        .map(|o| on_match_of(o, chains, &format!("{path}.on_no_match")).map(Box::new))
        .transpose()?;
    let kind = match &m.matcher_type {
        None => Kind::Empty,
        Some(MatcherType::MatcherList(list)) => {
            let lpath = format!("{path}.matcher_list.matchers");
            if list.matchers.is_empty() {
                return Err(format!("{lpath}: at least one is required"));
            }
            let mut entries = Vec::new();
            for (i, fm) in list.matchers.iter().enumerate() {
                let epath = format!("{lpath}[{i}]");
                let p = fm
                    .predicate
                    .as_ref()
                    .ok_or_else(|| format!("{epath}.predicate: required"))?;
                let o = fm
                    .on_match
                    .as_ref()
                    .ok_or_else(|| format!("{epath}.on_match: required"))?;
                entries.push((
                    predicate_of(p, &format!("{epath}.predicate"))?,
                    on_match_of(o, chains, &format!("{epath}.on_match"))?,
                ));
            }
            Kind::List(entries)
        }
        Some(MatcherType::MatcherTree(tree)) => {
            let tpath = format!("{path}.matcher_tree");
            let input = input_of(tree.input.as_ref(), &format!("{tpath}.input"))?;
            match &tree.tree_type {
                Some(TreeType::ExactMatchMap(map)) | Some(TreeType::PrefixMatchMap(map)) => {
                    let exact = matches!(tree.tree_type, Some(TreeType::ExactMatchMap(_)));
                    let mpath = format!(
                        "{tpath}.{}.map",
                        if exact {
                            "exact_match_map"
                        } else {
                            "prefix_match_map"
                        }
                    );
                    if map.map.is_empty() {
                        return Err(format!("{mpath}: at least one entry is required"));
                    }
                    let mut keys: Vec<&String> = map.map.keys().collect();
                    keys.sort();
                    let mut entries = Vec::new();
                    for k in keys {
                        entries.push((
                            k.clone(),
                            on_match_of(&map.map[k], chains, &format!("{mpath}[\"{k}\"]"))?,
                        ));
                    }
                    if exact {
                        Kind::Exact(input, entries.into_iter().collect::<HashMap<_, _>>())
                    } else {
                        Kind::Prefix(input, entries)
                    }
                }
                Some(TreeType::CustomMatch(c)) => {
                    ip_tree(input, c, chains, &format!("{tpath}.custom_match"))?
                }
                None => {
                    return Err(format!(
                        "{tpath}: one of exact_match_map, prefix_match_map or custom_match is required"
                    ));
                }
            }
        }
    };
    Ok(ChainMatcher { kind, on_no_match })
}

fn on_match_of(o: &OnMatchPb, chains: &[&str], path: &str) -> Result<OnMatch> {
    if o.keep_matching {
        return Err(format!(
            "{path}.keep_matching: not supported in a filter chain matcher"
        ));
    }
    match &o.on_match {
        Some(on_match::OnMatch::Matcher(m)) => Ok(OnMatch::Matcher(Box::new(compile(
            m,
            chains,
            &format!("{path}.matcher"),
        )?))),
        Some(on_match::OnMatch::Action(a)) => {
            let apath = format!("{path}.action.typed_config");
            let any = a
                .typed_config
                .as_ref()
                .ok_or_else(|| format!("{apath}: required"))?;
            if proto::type_name(&any.type_url) != ACTION {
                return Err(format!(
                    "{apath}: only a google.protobuf.StringValue naming a filter chain is supported"
                ));
            }
            let name: envoy_types::pb::google::protobuf::StringValue =
                proto::unpack(any).map_err(|e| format!("{apath}: {e}"))?;
            // A name no chain has is not a config error in Envoy: such connections close.
            Ok(OnMatch::Chain(chains.iter().position(|c| *c == name.value)))
        }
        None => Err(format!("{path}: a matcher or an action is required")),
    }
}

fn input_of(i: Option<&TypedExtensionConfig>, path: &str) -> Result<Input> {
    let any = i
        .and_then(|i| i.typed_config.as_ref())
        .ok_or_else(|| format!("{path}.typed_config: required"))?;
    let name = proto::type_name(&any.type_url);
    Ok(match name.strip_prefix(INPUTS) {
        Some("DestinationIPInput") => Input::DestinationIp,
        Some("DestinationPortInput") => Input::DestinationPort,
        Some("SourceIPInput") => Input::SourceIp,
        Some("SourcePortInput") => Input::SourcePort,
        Some("DirectSourceIPInput") => Input::DirectSourceIp,
        Some("SourceTypeInput") => Input::SourceType,
        Some("ServerNameInput") => Input::ServerName,
        Some("TransportProtocolInput") => Input::TransportProtocol,
        Some("ApplicationProtocolInput") => Input::ApplicationProtocol,
        _ => {
            return Err(format!(
                "{path}.typed_config ({name}): not a supported network input"
            ));
        }
    })
}

fn predicate_of(
    p: &envoy_types::pb::xds::r#type::matcher::v3::matcher::matcher_list::Predicate,
    path: &str,
) -> Result<Predicate> {
    use predicate::{MatchType, single_predicate};
    let list = |l: &predicate::PredicateList, name: &str| -> Result<Vec<Predicate>> {
        if l.predicate.len() < 2 {
            return Err(format!(
                "{path}.{name}.predicate: at least two are required"
            ));
        }
        l.predicate
            .iter()
            .enumerate()
            .map(|(i, p)| predicate_of(p, &format!("{path}.{name}.predicate[{i}]")))
            .collect()
    };
    Ok(match &p.match_type {
        Some(MatchType::SinglePredicate(s)) => {
            let spath = format!("{path}.single_predicate");
            let input = input_of(s.input.as_ref(), &format!("{spath}.input"))?;
            match &s.matcher {
                Some(single_predicate::Matcher::ValueMatch(m)) => Predicate::String(
                    input,
                    xds_string_matcher(m, &format!("{spath}.value_match"))?,
                ),
                Some(single_predicate::Matcher::CustomMatch(c)) => {
                    let cpath = format!("{spath}.custom_match.typed_config");
                    let any = c
                        .typed_config
                        .as_ref()
                        .ok_or_else(|| format!("{cpath}: required"))?;
                    if proto::type_name(&any.type_url) != IP_INPUT_MATCHER {
                        return Err(format!(
                            "{cpath} ({}): only {IP_INPUT_MATCHER} is supported",
                            proto::type_name(&any.type_url)
                        ));
                    }
                    let ip: envoy_types::pb::envoy::extensions::matching::input_matchers::ip::v3::Ip =
                        proto::unpack(any).map_err(|e| format!("{cpath}: {e}"))?;
                    if ip.cidr_ranges.is_empty() {
                        return Err(format!("{cpath}.cidr_ranges: at least one is required"));
                    }
                    Predicate::Ip(
                        input,
                        ip.cidr_ranges
                            .iter()
                            .enumerate()
                            .map(|(i, c)| {
                                super::rbac::cidr(c, &format!("{cpath}.cidr_ranges[{i}]"))
                            })
                            .collect::<Result<_>>()?,
                    )
                }
                None => return Err(format!("{spath}: value_match or custom_match is required")),
            }
        }
        Some(MatchType::OrMatcher(l)) => Predicate::Or(list(l, "or_matcher")?),
        Some(MatchType::AndMatcher(l)) => Predicate::And(list(l, "and_matcher")?),
        Some(MatchType::NotMatcher(p)) => {
            Predicate::Not(Box::new(predicate_of(p, &format!("{path}.not_matcher"))?))
        }
        None => return Err(format!("{path}: a predicate is required")),
    })
}

fn xds_string_matcher(m: &XdsStringMatcher, path: &str) -> Result<StringMatcher> {
    use super::route_config::Pattern;
    use string_matcher::MatchPattern as P;
    let pattern = m.match_pattern.as_ref().map(|p| match p {
        P::Exact(v) => Pattern::Exact(v),
        P::Prefix(v) => Pattern::Prefix(v),
        P::Suffix(v) => Pattern::Suffix(v),
        P::Contains(v) => Pattern::Contains(v),
        P::SafeRegex(r) => Pattern::Regex(&r.regex),
        P::Custom(_) => Pattern::Custom,
    });
    super::route_config::compile_string_matcher(pattern, m.ignore_case, path)
}

fn ip_tree(input: Input, c: &TypedExtensionConfig, chains: &[&str], path: &str) -> Result<Kind> {
    let cpath = format!("{path}.typed_config");
    let any: &Any = c
        .typed_config
        .as_ref()
        .ok_or_else(|| format!("{cpath}: required"))?;
    let name = proto::type_name(&any.type_url);
    if name != IP_MATCHER {
        return Err(format!("{cpath} ({name}): only {IP_MATCHER} is supported"));
    }
    let m = <IpMatcherPb as prost::Message>::decode(any.value.as_slice())
        .map_err(|e| format!("{cpath}: {e}"))?;
    let mut ranges = Vec::new();
    let mut matchers = Vec::new();
    for (i, r) in m.range_matchers.iter().enumerate() {
        let rpath = format!("{cpath}.range_matchers[{i}]");
        if r.ranges.is_empty() {
            return Err(format!("{rpath}.ranges: at least one is required"));
        }
        for (j, c) in r.ranges.iter().enumerate() {
            let cp = format!("{rpath}.ranges[{j}]");
            let ip = c.address_prefix.parse().map_err(|_| {
                format!(
                    "{cp}.address_prefix: '{}' is not an IP address",
                    c.address_prefix
                )
            })?;
            let cidr = Cidr::new(ip, c.prefix_len.as_ref().map_or(0, |l| l.value))
                .map_err(|e| format!("{cp}: {e}"))?;
            ranges.push((cidr, i));
        }
        let on_match = r
            .on_match
            .as_ref()
            .ok_or_else(|| format!("{rpath}.on_match: required"))?;
        matchers.push((
            on_match_of(on_match, chains, &format!("{rpath}.on_match"))?,
            r.exclusive,
        ));
    }
    Ok(Kind::Ip {
        input,
        ranges,
        matchers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compile_json(json: &str) -> Result<ChainMatcher> {
        let m: Matcher = proto::from_yaml_for_tests(json);
        compile(&m, &["a", "b"], "m")
    }

    #[test]
    fn refuses_what_it_cannot_evaluate_naming_the_field() {
        let action = |name: &str| {
            format!(
                r#"{{"action": {{"name": "x", "typed_config": {{"@type": "type.googleapis.com/google.protobuf.StringValue", "value": "{name}"}}}}}}"#
            )
        };
        let port = r#"{"name": "p", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.matching.common_inputs.network.v3.DestinationPortInput"}}"#;
        let ok = compile_json(&format!(
            r#"{{"matcher_tree": {{"input": {port}, "exact_match_map": {{"map": {{"80": {}, "81": {}}}}}}}}}"#,
            action("a"),
            action("nope")
        ))
        .unwrap();
        assert!(!ok.needs_inspection());
        let keep = format!(
            r#"{{"matcher_tree": {{"input": {port}, "exact_match_map": {{"map": {{"80": {{"keep_matching": true, "action": {{"name": "x", "typed_config": {{"@type": "type.googleapis.com/google.protobuf.StringValue", "value": "a"}}}}}}}}}}}}}}"#
        );
        assert_eq!(
            compile_json(&keep).unwrap_err(),
            "m.matcher_tree.exact_match_map.map[\"80\"].keep_matching: not supported in a filter chain matcher"
        );
        let http_input = r#"{"matcher_tree": {"input": {"name": "h", "typed_config": {"@type": "type.googleapis.com/envoy.type.matcher.v3.HttpRequestHeaderMatchInput", "header_name": "x"}}, "exact_match_map": {"map": {"a": {"matcher": {}}}}}}"#;
        assert!(
            compile_json(http_input)
                .unwrap_err()
                .contains("not a supported network input")
        );
    }
}
