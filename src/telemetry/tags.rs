//! Envoy's tag extraction: how a flat stat name (`cluster.xds-grpc;.upstream_cx_total`)
//! becomes a tag-extracted name and labels (`cluster.upstream_cx_total`,
//! `cluster_name="xds-grpc"`) under a bootstrap's `stats_config`. Used when the bootstrap
//! sets `stats_tags` or turns `use_all_default_tags` off (Istio does both); without
//! either, the names the scopes give match Envoy's defaults already and this is skipped.
//!
//! Envoy's rules, checked against Envoy 1.40:
//! - every extractor sees the original name; what each removes is unioned;
//! - a custom (`stats_tags[].regex`) extractor is a regex search: group 1 is removed,
//!   group 2 (when the regex has one) is the value, else group 1; an empty value is kept;
//! - a built-in regex extractor needs its substring, a non-empty group 1, and takes
//!   group 1 as the value when group 2 is empty; a `negative` value suppresses it;
//! - built-in token extractors match `.`-separated tokens (`*` one, `**` many, `$` the
//!   value) over the whole name;
//! - extractors whose pattern starts with a literal first token run only on names with
//!   that first token, after the ones without such a prefix, each group in config order;
//! - of several extractors with one tag name, only the first that matches counts;
//! - `fixed_value` tags come first on every name.
use std::{collections::HashMap, ops::Range};

/// A compiled `stats_config`'s tag rules.
#[derive(Debug, Default)]
pub struct TagProducer {
    fixed: Vec<(String, String)>,
    no_prefix: Vec<Extractor>,
    by_prefix: HashMap<String, Vec<Extractor>>,
}

#[derive(Debug)]
struct Extractor {
    name: String,
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    /// `stats_tags[].regex` (Envoy compiles these with std::regex, ECMAScript, which
    /// has look-ahead: Istio's regexes use it).
    Custom(fancy_regex::Regex),
    /// A built-in regex extractor.
    Builtin {
        re: regex::Regex,
        substr: &'static str,
        negative: &'static str,
    },
    /// A built-in token pattern.
    Tokens(Vec<Token>),
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Literal(String),
    One,
    Many,
    Value,
}

/// One configured tag rule, as `stats_tags[]` gives it.
#[derive(Debug, Clone)]
pub enum TagRule {
    Regex {
        name: String,
        regex: String,
    },
    Fixed {
        name: String,
        value: String,
    },
    /// A tag name only: the built-in extractors of that name.
    Builtin {
        name: String,
    },
}

impl TagProducer {
    /// Envoy's `TagProducerImpl`: the built-in extractors first when `use_all_default_tags`,
    /// then each rule in order. Errors say what is wrong with which rule.
    pub fn new(use_all_default_tags: bool, rules: &[TagRule]) -> Result<Self, String> {
        let mut p = TagProducer::default();
        if use_all_default_tags {
            for b in BUILTIN {
                p.add(b.build()?);
            }
        }
        for (i, rule) in rules.iter().enumerate() {
            match rule {
                TagRule::Fixed { name, value } => p.fixed.push((name.clone(), value.clone())),
                TagRule::Regex { name, regex } => {
                    let re = fancy_regex::Regex::new(regex)
                        .map_err(|e| format!("stats_tags[{i}].regex: {e}"))?;
                    if re.captures_len() < 2 {
                        return Err(format!(
                            "stats_tags[{i}].regex: '{regex}' has no capture group"
                        ));
                    }
                    p.add(Extractor {
                        name: name.clone(),
                        kind: Kind::Custom(re),
                    });
                }
                TagRule::Builtin { name } => {
                    let found: Vec<_> = BUILTIN.iter().filter(|b| b.name == name).collect();
                    if found.is_empty() {
                        return Err(format!(
                            "stats_tags[{i}]: No regex specified for tag specifier and no \
                             default regex for name: '{name}'"
                        ));
                    }
                    for b in found {
                        p.add(b.build()?);
                    }
                }
            }
        }
        Ok(p)
    }

    fn add(&mut self, e: Extractor) {
        match e.prefix() {
            Some(prefix) => self.by_prefix.entry(prefix).or_default().push(e),
            None => self.no_prefix.push(e),
        }
    }

    /// The tag-extracted name and the tags of `name`, in Envoy's order.
    pub fn produce(&self, name: &str) -> (String, Vec<(String, String)>) {
        let mut tags: Vec<(String, String)> = self.fixed.clone();
        let mut removed: Vec<Range<usize>> = Vec::new();
        let first = name.split('.').next().unwrap_or("");
        let specific = self.by_prefix.get(first).into_iter().flatten();
        let mut done: Vec<&str> = Vec::new();
        for e in self.no_prefix.iter().chain(specific) {
            if done.contains(&e.name.as_str()) {
                continue;
            }
            if let Some((value, remove)) = e.extract(name) {
                done.push(&e.name);
                tags.push((e.name.clone(), value));
                removed.push(remove);
            }
        }
        if removed.is_empty() {
            return (name.to_owned(), tags);
        }
        let out = name
            .char_indices()
            .filter(|(i, _)| !removed.iter().any(|r| r.contains(i)))
            .map(|(_, c)| c)
            .collect();
        (out, tags)
    }
}

impl Extractor {
    /// The first token a name must have for this extractor to apply, if its pattern
    /// fixes one (Envoy's optimization, which also decides the order tags come in).
    fn prefix(&self) -> Option<String> {
        match &self.kind {
            Kind::Tokens(t) => match t.first() {
                Some(Token::Literal(s)) => Some(s.clone()),
                _ => None,
            },
            Kind::Custom(re) => regex_prefix(re.as_str()),
            Kind::Builtin { re, .. } => regex_prefix(re.as_str()),
        }
    }

    /// The tag value and the byte range to remove from `name`, when this extractor applies.
    fn extract(&self, name: &str) -> Option<(String, Range<usize>)> {
        match &self.kind {
            Kind::Custom(re) => {
                let caps = re.captures(name).ok()??;
                let remove = caps.get(1)?;
                let value = if re.captures_len() > 2 {
                    caps.get(2).map(|m| m.as_str()).unwrap_or("")
                } else {
                    remove.as_str()
                };
                Some((value.to_owned(), remove.range()))
            }
            Kind::Builtin {
                re,
                substr,
                negative,
            } => {
                if !substr.is_empty() && !name.contains(substr) {
                    return None;
                }
                let caps = re.captures(name)?;
                let remove = caps.get(1).filter(|m| !m.is_empty())?;
                let value = caps
                    .get(2)
                    .map(|m| m.as_str())
                    .filter(|v| !v.is_empty())
                    .unwrap_or(remove.as_str());
                if !negative.is_empty() && value == *negative {
                    return None;
                }
                Some((value.to_owned(), remove.range()))
            }
            Kind::Tokens(pattern) => tokens_extract(pattern, name),
        }
    }
}

/// `^word\.` or `^word(?=\.)` or `^word$`: the literal first token of a regex.
fn regex_prefix(re: &str) -> Option<String> {
    let rest = re.strip_prefix('^')?;
    let end = rest
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(rest.len());
    if end == 0 {
        return None;
    }
    let after = &rest[end..];
    (after.starts_with("\\.") || after.starts_with("(?=\\.)") || after == "$")
        .then(|| rest[..end].to_owned())
}

/// Matches a token pattern against the whole name; returns the `$` token's value and
/// what to remove (the token with the dot after it, or before it when it is last).
fn tokens_extract(pattern: &[Token], name: &str) -> Option<(String, Range<usize>)> {
    let mut spans = Vec::new();
    let mut start = 0;
    for part in name.split('.') {
        spans.push(start..start + part.len());
        start += part.len() + 1;
    }
    let toks: Vec<&str> = spans.iter().map(|r| &name[r.clone()]).collect();
    let at = match_tokens(pattern, &toks, 0)??;
    let value = &spans[at];
    let remove = if at + 1 < spans.len() {
        value.start..value.end + 1
    } else if at > 0 {
        value.start - 1..value.end
    } else {
        value.clone()
    };
    Some((name[value.clone()].to_owned(), remove))
}

/// Whether `pattern` matches `toks[i..]` entirely: `Some` with the index of the token
/// `$` took (if the pattern had one), `None` when it does not match.
fn match_tokens(pattern: &[Token], toks: &[&str], i: usize) -> Option<Option<usize>> {
    let Some((first, rest)) = pattern.split_first() else {
        return (i == toks.len()).then_some(None);
    };
    match first {
        Token::Literal(s) if toks.get(i) == Some(&s.as_str()) => match_tokens(rest, toks, i + 1),
        Token::Literal(_) => None,
        Token::One if i < toks.len() => match_tokens(rest, toks, i + 1),
        Token::Value if i < toks.len() => match_tokens(rest, toks, i + 1).map(|v| v.or(Some(i))),
        Token::One | Token::Value => None,
        // `**` last: one or more tokens; elsewhere: zero or more.
        Token::Many if rest.is_empty() => (i < toks.len()).then_some(None),
        Token::Many => (i..=toks.len()).find_map(|j| match_tokens(rest, toks, j)),
    }
}

/// A built-in extractor, as Envoy 1.40's `well_known_names` defines it (regexes in this
/// crate's syntax, same language).
struct Builtin {
    name: &'static str,
    regex: &'static str,
    substr: &'static str,
    negative: &'static str,
}

impl Builtin {
    fn build(&self) -> Result<Extractor, String> {
        let kind = if self.regex.starts_with('^') || self.regex.contains('(') {
            Kind::Builtin {
                re: regex::Regex::new(&expand(self.regex))
                    .map_err(|e| format!("built-in tag {}: {e}", self.name))?,
                substr: self.substr,
                negative: self.negative,
            }
        } else {
            Kind::Tokens(
                self.regex
                    .split('.')
                    .map(|t| match t {
                        "*" => Token::One,
                        "**" => Token::Many,
                        "$" => Token::Value,
                        lit => Token::Literal(lit.to_owned()),
                    })
                    .collect(),
            )
        };
        Ok(Extractor {
            name: self.name.to_owned(),
            kind,
        })
    }
}

fn expand(re: &str) -> String {
    re.replace(
        "<ADDRESS>",
        r"(?:(?:\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}|\[[a-fA-F_\d]+\])_\d+)",
    )
    .replace("<CIPHER>", r"[\w-]+")
    .replace("<TLS_VERSION>", r"TLSv\d\.\d")
    .replace("<TAG_VALUE>", r"[^\.]+")
    .replace("<ROUTE_CONFIG_NAME>", r"[\w\-\./]+")
    .replace("<SCOPED_ROUTE_CONFIG_NAME>", r"[\w\-\.]+")
    .replace(
        "<LISTENER_OR_CLUSTER_WITH_NAME>",
        r"(?:listener|cluster)\..*?",
    )
    .replace("<PROXY_PROTOCOL_VERSION>", r"\d")
}

const fn b(name: &'static str, regex: &'static str) -> Builtin {
    Builtin {
        name,
        regex,
        substr: "",
        negative: "",
    }
}

const fn bs(name: &'static str, regex: &'static str, substr: &'static str) -> Builtin {
    Builtin {
        name,
        regex,
        substr,
        negative: "",
    }
}

const fn bn(name: &'static str, regex: &'static str, negative: &'static str) -> Builtin {
    Builtin {
        name,
        regex,
        substr: "",
        negative,
    }
}

/// Envoy's default tag extractors, regex ones first, in Envoy's order.
const BUILTIN: &[Builtin] = &[
    bs("envoy.response_code", r"_rq(_(\d{3}))$", "_rq_"),
    bs("envoy.response_code_class", r"_rq_((\d))xx$", "_rq_"),
    bs(
        "envoy.dynamo_partition_id",
        r"^http\.<TAG_VALUE>\.dynamodb\.table\.<TAG_VALUE>\.capacity\.<TAG_VALUE>(\.__partition_id=(\w{7}))$",
        ".dynamodb.table.",
    ),
    bs(
        "envoy.dynamo_operation",
        r"^http\.<TAG_VALUE>\.dynamodb.(?:operation|table\.<TAG_VALUE>\.capacity)(\.(<TAG_VALUE>))(?:\.|$)",
        ".dynamodb.",
    ),
    bs(
        "envoy.dynamo_table",
        r"^http\.<TAG_VALUE>\.dynamodb.(?:table|error)\.((<TAG_VALUE>)\.)",
        ".dynamodb.",
    ),
    bs(
        "envoy.ssl_cipher",
        r"^listener\..*?\.ssl\.ciphers(\.(<CIPHER>))$",
        ".ssl.ciphers.",
    ),
    bs(
        "envoy.ssl_curve",
        r"^<LISTENER_OR_CLUSTER_WITH_NAME>\.ssl\.curves(\.(<CIPHER>))$",
        ".ssl.curves.",
    ),
    bs(
        "envoy.ssl_sigalg",
        r"^<LISTENER_OR_CLUSTER_WITH_NAME>\.ssl\.sigalgs(\.(<CIPHER>))$",
        ".ssl.sigalgs.",
    ),
    bs(
        "envoy.ssl_version",
        r"^<LISTENER_OR_CLUSTER_WITH_NAME>\.ssl\.versions(\.(<TLS_VERSION>))$",
        ".ssl.versions.",
    ),
    bs(
        "cipher_suite",
        r"^cluster\.<TAG_VALUE>\.ssl\.ciphers(\.(<CIPHER>))$",
        ".ssl.ciphers.",
    ),
    bs(
        "envoy.http_conn_manager_prefix",
        r"^listener\..*?\.http\.((<TAG_VALUE>)\.)",
        ".http.",
    ),
    b(
        "envoy.worker_id",
        r"^(?:listener\.(?:<ADDRESS>|<TAG_VALUE>)|server|listener_manager|thread_local_cluster_manager)\.worker_((\d+)\.)",
    ),
    bn(
        "envoy.listener_address",
        r"^listener\.((<ADDRESS>|<TAG_VALUE>)\.)",
        "admin",
    ),
    bs(
        "envoy.rds_route_config",
        r"^http\.<TAG_VALUE>\.rds\.((<ROUTE_CONFIG_NAME>)\.)\w+?$",
        ".rds.",
    ),
    bs(
        "envoy.scoped_rds_config",
        r"^http\.<TAG_VALUE>\.scoped_rds\.((<SCOPED_ROUTE_CONFIG_NAME>)\.)\w+?$",
        ".scoped_rds.",
    ),
    b(
        "envoy.rbac_policy_name",
        r"^http\.<TAG_VALUE>\.rbac\.(?:<TAG_VALUE>\.)?policy\.((<TAG_VALUE>)\.)(allowed|shadow_allowed|denied|shadow_denied)$",
    ),
    bn(
        "envoy.rbac_http_prefix",
        r"^http\.<TAG_VALUE>\.rbac\.((<TAG_VALUE>)\.).*?",
        "policy",
    ),
    bn(
        "envoy.proxy_protocol_prefix",
        r"^proxy_proto\.((<TAG_VALUE>)\.).+$",
        "versions",
    ),
    b(
        "envoy.proxy_protocol_version",
        r"^proxy_proto\.((?:<TAG_VALUE>\.)?versions\.v(<PROXY_PROTOCOL_VERSION>)\.)\w+$",
    ),
    bs(
        "envoy.tls_certificate",
        r"^<LISTENER_OR_CLUSTER_WITH_NAME>\.ssl\.certificate\.((<TAG_VALUE>)\.).*$",
        ".ssl.certificate",
    ),
    b("envoy.xds_resource_name", r"^sds\.((<TAG_VALUE>)\.).+"),
    bs(
        "envoy.health_check_name",
        r"^cluster\.<TAG_VALUE>\.health_check(\.name\.(<TAG_VALUE>))\..+",
        ".health_check",
    ),
    b(
        "envoy.mongo_callsite",
        "mongo.*.collection.*.callsite.$.query.**",
    ),
    b("envoy.mongo_collection", "mongo.*.collection.$.**.query.*"),
    b("envoy.mongo_cmd", "mongo.*.cmd.$.**"),
    b("envoy.grpc_bridge_method", "cluster.*.grpc.*.$.**"),
    b("envoy.http_user_agent", "http.*.user_agent.$.**"),
    b("envoy.virtual_cluster", "vhost.*.vcluster.$.**"),
    b("envoy.fault_downstream_cluster", "http.*.fault.$.**"),
    b("envoy.grpc_bridge_service", "cluster.*.grpc.$.**"),
    b("envoy.tcp_prefix", "tcp.$.**"),
    b("envoy.udp_prefix", "udp.$.**"),
    b("envoy.clientssl_prefix", "auth.clientssl.$.**"),
    b("envoy.ratelimit_prefix", "ratelimit.$.**"),
    b("envoy.cluster_name", "cluster.$.**"),
    b("envoy.ext_authz_prefix", "cluster.*.ext_authz.$.**"),
    b("envoy.ext_authz_prefix", "http.*.ext_authz.$.**"),
    b("envoy.http_conn_manager_prefix", "http.$.**"),
    b("envoy.virtual_host", "vhost.$.**"),
    b("envoy.mongo_prefix", "mongo.$.**"),
    b("envoy.route", "vhost.*.route.$.**"),
    b("envoy.thrift_prefix", "thrift.$.**"),
    b("envoy.redis_prefix", "redis.$.**"),
    b(
        "envoy.local_http_ratelimit_prefix",
        "$.http_local_rate_limit.**",
    ),
    b(
        "envoy.local_network_ratelimit_prefix",
        "local_rate_limit.$.**",
    ),
    b(
        "envoy.local_listener_ratelimit_prefix",
        "listener_local_ratelimit.$.**",
    ),
    b("envoy.dns_filter_prefix", "dns_filter.$.**"),
    b("envoy.connection_limit_prefix", "connection_limit.$.**"),
    b("envoy.rbac_prefix", "$.rbac.**"),
    b("envoy.google_grpc_client_prefix", "grpc.$.**"),
];

#[cfg(test)]
mod tests {
    use super::*;

    /// Istio 1.30.3's `stats_tags` (its default golden bootstrap), in order.
    fn istio_130() -> TagProducer {
        let rules: Vec<TagRule> = [
            ("cluster_name", r"^cluster(\.(.+);)"),
            (
                "http_conn_manager_prefix",
                r"^http\.(((?:[_.[:digit:]\w]*|[_\[\]aAbBcCdDeEfF[:digit:]\w\:]*));\.)",
            ),
            ("thread_name", r"^server(\.(.+))\.watchdog"),
            ("tcp_prefix", r"^tcp\.((.*?)\.)\w+?$"),
            ("response_code", r"_rq(_(\d{3}))$"),
            ("response_code_class", r"_rq(_(\dxx))$"),
            (
                "http_conn_manager_listener_prefix",
                r"^listener(?=\.).*?\.http\.(((?:[_.[:digit:]]*|[_\[\]aAbBcCdDeEfF[:digit:]]*))\.)",
            ),
            (
                "listener_address",
                r"^listener\.(((?:[_.[:digit:]]*|[_\[\]aAbBcCdDeEfF[:digit:]]*))\.)",
            ),
            (
                "mongo_prefix",
                r"^mongo\.(.+?)\.(collection|cmd|cx_|op_|delays_|decoding_)(.*?)$",
            ),
            ("cache", r"(cache\.(.+?)\.)"),
            ("component", r"(component\.(.+?)\.)"),
            ("tag", r"(tag\.(.+?);\.)"),
            ("wasm_filter", r"(wasm_filter\.(.+?)\.)"),
            ("authz_enforce_result", r"rbac(\.(allowed|denied))"),
            ("authz_dry_run_action", r"(\.istio_dry_run_(allow|deny)_)"),
            ("authz_dry_run_result", r"(\.shadow_(allowed|denied))"),
        ]
        .into_iter()
        .map(|(n, r)| TagRule::Regex {
            name: n.into(),
            regex: r.into(),
        })
        .collect();
        TagProducer::new(false, &rules).unwrap()
    }

    fn show(p: &TagProducer, name: &str) -> String {
        let (n, tags) = p.produce(name);
        let labels: Vec<String> = tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
        format!("{n}{{{}}}", labels.join(","))
    }

    /// Envoy 1.40's output for Istio's tags, captured with the real binary.
    #[test]
    fn istio_tags_as_envoy_extracts_them() {
        let p = istio_130();
        for (flat, want) in [
            (
                "cluster.xds-grpc;.upstream_cx_total",
                "cluster.upstream_cx_total{cluster_name=xds-grpc}",
            ),
            (
                "cluster.outbound|8080||backend.default.svc.cluster.local;.upstream_rq_200",
                "cluster.upstream_rq{cluster_name=outbound|8080||backend.default.svc.cluster.local,response_code=200}",
            ),
            (
                "cluster.xds-grpc;.upstream_rq_5xx",
                "cluster.upstream_rq{cluster_name=xds-grpc,response_code_class=5xx}",
            ),
            (
                "http.outbound_0.0.0.0_9080;.downstream_rq_2xx",
                "http.downstream_rq{response_code_class=2xx,http_conn_manager_prefix=outbound_0.0.0.0_9080}",
            ),
            (
                "http.inbound_0.0.0.0_9082.downstream_rq_2xx",
                "http.inbound_0.0.0.0_9082.downstream_rq{response_code_class=2xx}",
            ),
            (
                "server.main_thread.watchdog_miss",
                "server.watchdog_miss{thread_name=main_thread}",
            ),
            (
                "tcp.outbound|8081||backend.default.svc.cluster.local.downstream_cx_total",
                "tcp.downstream_cx_total{tcp_prefix=outbound|8081||backend.default.svc.cluster.local}",
            ),
            (
                "listener.0.0.0.0_9080.downstream_cx_total",
                "listener.downstream_cx_total{listener_address=0.0.0.0_9080}",
            ),
            (
                "listener.0.0.0.0_9080.http.outbound_0.0.0.0_9080;.downstream_rq_2xx",
                "listener.http.outbound_0.0.0.0_9080;.downstream_rq{response_code_class=2xx,listener_address=0.0.0.0_9080}",
            ),
            (
                "listener.admin.downstream_cx_total",
                "listener.admin.downstream_cx_total{}",
            ),
            (
                "mongo.foo.cx_bar.x",
                // Istio's regex: group 2 lies outside group 1 (Envoy prints `mongo__cx_bar`).
                "mongo..cx_bar.x{mongo_prefix=cx_}",
            ),
            (
                "http.outbound_0.0.0.0_9080;.rbac.istio_dry_run_allow_.shadow_denied",
                "http.rbac{authz_dry_run_action=allow,authz_dry_run_result=denied,http_conn_manager_prefix=outbound_0.0.0.0_9080}",
            ),
            (
                "cluster.no_alt.default.svc.cluster.local.upstream_cx_total",
                "cluster.no_alt.default.svc.cluster.local.upstream_cx_total{}",
            ),
            (
                "cluster_manager.active_clusters",
                "cluster_manager.active_clusters{}",
            ),
        ] {
            assert_eq!(show(&p, flat), want, "{flat}");
        }
    }

    /// Envoy 1.40's output with `use_all_default_tags` and no custom tags.
    #[test]
    fn envoy_default_tags() {
        let p = TagProducer::new(true, &[]).unwrap();
        for (flat, want) in [
            (
                "cluster.outbound|8080||backend.default.svc.cluster.local;.upstream_rq_2xx",
                "cluster.default.svc.cluster.local;.upstream_rq_xx{envoy.response_code_class=2,envoy.cluster_name=outbound|8080||backend}",
            ),
            (
                "cluster.xds-grpc;.upstream_cx_total",
                "cluster.upstream_cx_total{envoy.cluster_name=xds-grpc;}",
            ),
            (
                "server.worker_0.watchdog_miss",
                "server.worker_watchdog_miss{envoy.worker_id=0}",
            ),
            (
                "listener.0.0.0.0_9080.worker_0.downstream_cx_total",
                "listener.worker_downstream_cx_total{envoy.worker_id=0,envoy.listener_address=0.0.0.0_9080}",
            ),
            (
                "vhost.backend.default.svc.cluster.local:8080.route.backend_route.upstream_rq_200",
                "vhost.default.svc.cluster.local:8080.route.backend_route.upstream_rq{envoy.response_code=200,envoy.virtual_host=backend}",
            ),
            (
                "http.outbound_0.0.0.0_9080;.downstream_cx_total",
                "http.0.0.0_9080;.downstream_cx_total{envoy.http_conn_manager_prefix=outbound_0}",
            ),
            (
                "cluster.backend.upstream_rq_200",
                "cluster.upstream_rq{envoy.response_code=200,envoy.cluster_name=backend}",
            ),
            (
                "listener.admin.downstream_cx_total",
                "listener.admin.downstream_cx_total{}",
            ),
            (
                "tcp.tcp_stats.downstream_cx_total",
                "tcp.downstream_cx_total{envoy.tcp_prefix=tcp_stats}",
            ),
        ] {
            assert_eq!(show(&p, flat), want, "{flat}");
        }
    }

    #[test]
    fn rule_edge_cases() {
        let rule = |n: &str, r: &str| TagRule::Regex {
            name: n.into(),
            regex: r.into(),
        };
        // Each extractor sees the original name; the first of a tag name wins.
        let p = TagProducer::new(
            false,
            &[
                TagRule::Fixed {
                    name: "fixed1".into(),
                    value: "v1".into(),
                },
                rule("x_first", r"^t1\.((aaa)\.)"),
                rule("y_second", r"^t1\.((bbb)\.)"),
                rule("dup", r"^t2\.((one)\.)"),
                rule("dup", r"^t2\.one\.((two)\.)"),
                rule("emp", r"^t3(\.(z*))"),
                rule("onegroup", r"^t4\.(solo)\."),
            ],
        )
        .unwrap();
        assert_eq!(show(&p, "t1.aaa.bbb.x"), "t1.bbb.x{fixed1=v1,x_first=aaa}");
        assert_eq!(show(&p, "t2.one.two.x"), "t2.two.x{fixed1=v1,dup=one}");
        assert_eq!(show(&p, "t3.q"), "t3q{fixed1=v1,emp=}");
        assert_eq!(show(&p, "t4.solo.x"), "t4..x{fixed1=v1,onegroup=solo}");
        // A name-only rule takes the built-ins of that name.
        let p = TagProducer::new(
            false,
            &[TagRule::Builtin {
                name: "envoy.worker_id".into(),
            }],
        )
        .unwrap();
        assert_eq!(
            show(&p, "server.worker_3.x"),
            "server.worker_x{envoy.worker_id=3}"
        );
        assert!(
            TagProducer::new(
                false,
                &[TagRule::Builtin {
                    name: "nope".into()
                }]
            )
            .unwrap_err()
            .contains("no default regex for name: 'nope'")
        );
    }
}
