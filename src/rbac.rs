//! Envoy's role-based access control engine (`envoy.config.rbac.v3.RBAC`), shared by
//! the network filter (`envoy.filters.network.rbac`, decided per connection) and the
//! HTTP filter (`envoy.filters.http.rbac`, per request): policies of permissions (what
//! is asked for) and principals (who asks), and an action.
//!
//! As in Envoy: a policy matches when any of its permissions and any of its principals
//! match; ALLOW lets a request through only when a policy matches, DENY refuses it when
//! one does, LOG always lets it through. A request-only matcher (headers, path, dynamic
//! metadata) never matches a connection, and `authenticated` needs a verified peer
//! certificate (its URI SAN is the principal name).
use std::{collections::BTreeMap, net::SocketAddr};

use http::HeaderMap;

use crate::{
    http::{
        dynamic_metadata::DynamicMetadata,
        matchers::{HeaderMatcher, RequestHead, StringMatcher},
        metadata_matcher::MetadataMatcher,
    },
    net::cidr::Cidr,
    telemetry::stats::{Counter, Store},
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Allow,
    Deny,
    Log,
}

/// A compiled `RBAC` (rules): the action and the policies by name (Envoy evaluates them
/// in name order: the first that matches is the one reported).
#[derive(Debug, Clone)]
pub struct Rules {
    pub action: Action,
    pub policies: BTreeMap<String, Policy>,
}

#[derive(Debug, Clone)]
pub struct Policy {
    pub permissions: Vec<Permission>,
    pub principals: Vec<Principal>,
}

#[derive(Debug, Clone)]
pub enum Permission {
    And(Vec<Permission>),
    Or(Vec<Permission>),
    Not(Box<Permission>),
    Any,
    Header(HeaderMatcher),
    /// The path without its query string.
    UrlPath(StringMatcher),
    DestinationIp(Cidr),
    DestinationPort(u16),
    /// `[start, end)`.
    DestinationPortRange(u32, u32),
    RequestedServerName(StringMatcher),
    /// The request's dynamic metadata (never matches a connection).
    Metadata(MetadataMatcher),
}

#[derive(Debug, Clone)]
pub enum Principal {
    And(Vec<Principal>),
    Or(Vec<Principal>),
    Not(Box<Principal>),
    Any,
    /// `authenticated`: a verified peer certificate, its name matching when given.
    Authenticated(Option<StringMatcher>),
    /// `direct_remote_ip` (and the deprecated `source_ip`): the connection's peer.
    DirectRemoteIp(Cidr),
    /// `remote_ip`: the client as the connection manager determined it (`x-forwarded-for`
    /// under its rules), the peer for a connection.
    RemoteIp(Cidr),
    Header(HeaderMatcher),
    UrlPath(StringMatcher),
    /// The request's dynamic metadata: Istio's request principals and JWT claims, from
    /// jwt_authn's `payload_in_metadata`.
    Metadata(MetadataMatcher),
}

/// What a decision is made on.
pub struct Subject<'a> {
    pub peer: SocketAddr,
    /// The client as the connection manager sees it (for `remote_ip`).
    pub remote: SocketAddr,
    /// The connection's (original) destination.
    pub local: SocketAddr,
    pub server_name: Option<&'a str>,
    /// The verified peer identity (SPIFFE URI SAN …); none without TLS.
    pub peer_principal: Option<&'a str>,
    /// The request, for HTTP.
    pub request: Option<&'a RequestHead<'a>>,
    /// What earlier HTTP filters left (none for a connection).
    pub metadata: Option<&'a DynamicMetadata>,
}

impl Rules {
    /// Whether the rules let `s` through, and the policy that matched (if any).
    pub fn decide(&self, s: &Subject<'_>) -> (bool, Option<&str>) {
        let matched = self
            .policies
            .iter()
            .find(|(_, p)| p.matches(s))
            .map(|(n, _)| n.as_str());
        let allowed = match self.action {
            Action::Allow => matched.is_some(),
            Action::Deny => matched.is_none(),
            Action::Log => true,
        };
        (allowed, matched)
    }
}

impl Policy {
    fn matches(&self, s: &Subject<'_>) -> bool {
        self.permissions.iter().any(|p| p.matches(s))
            && self.principals.iter().any(|p| p.matches(s))
    }
}

fn empty_request() -> &'static HeaderMap {
    static EMPTY: std::sync::OnceLock<HeaderMap> = std::sync::OnceLock::new();
    EMPTY.get_or_init(HeaderMap::new)
}

/// A header matcher in a connection's context sees a request with no headers, as
/// Envoy's network filter evaluates it.
fn header_matches(m: &HeaderMatcher, s: &Subject<'_>) -> bool {
    match s.request {
        Some(r) => m.matches(r),
        None => m.matches(&RequestHead {
            method: "",
            scheme: "",
            authority: "",
            path_and_query: "",
            headers: empty_request(),
        }),
    }
}

fn path_matches(m: &StringMatcher, s: &Subject<'_>) -> bool {
    s.request.is_some_and(|r| {
        let path = r.path_and_query.split(['?', '#']).next().unwrap_or("");
        m.matches(path)
    })
}

impl Permission {
    fn matches(&self, s: &Subject<'_>) -> bool {
        match self {
            Permission::And(all) => all.iter().all(|p| p.matches(s)),
            Permission::Or(any) => any.iter().any(|p| p.matches(s)),
            Permission::Not(p) => !p.matches(s),
            Permission::Any => true,
            Permission::Header(h) => header_matches(h, s),
            Permission::UrlPath(m) => path_matches(m, s),
            Permission::DestinationIp(c) => c.contains(s.local.ip()),
            Permission::DestinationPort(p) => s.local.port() == *p,
            Permission::DestinationPortRange(a, b) => (*a..*b).contains(&u32::from(s.local.port())),
            Permission::RequestedServerName(m) => m.matches(s.server_name.unwrap_or("")),
            Permission::Metadata(m) => m.matches(s.metadata),
        }
    }
}

impl Principal {
    fn matches(&self, s: &Subject<'_>) -> bool {
        match self {
            Principal::And(all) => all.iter().all(|p| p.matches(s)),
            Principal::Or(any) => any.iter().any(|p| p.matches(s)),
            Principal::Not(p) => !p.matches(s),
            Principal::Any => true,
            Principal::Authenticated(name) => match (s.peer_principal, name) {
                (Some(_), None) => true,
                (Some(p), Some(m)) => m.matches(p),
                (None, _) => false,
            },
            Principal::DirectRemoteIp(c) => c.contains(s.peer.ip()),
            Principal::RemoteIp(c) => c.contains(s.remote.ip()),
            Principal::Header(h) => header_matches(h, s),
            Principal::UrlPath(m) => path_matches(m, s),
            Principal::Metadata(m) => m.matches(s.metadata),
        }
    }
}

/// A filter's enforced and shadow rules, as both RBAC filters configure them.
#[derive(Debug, Clone)]
pub struct RbacConfig {
    /// `rules`; `None`: everything is allowed.
    pub rules: Option<Rules>,
    /// `shadow_rules`: evaluated and counted, never enforced (Istio's dry run).
    pub shadow: Option<Rules>,
    pub rules_stat_prefix: String,
    pub shadow_rules_stat_prefix: String,
}

/// `<prefix>rbac.{allowed,denied}` and the shadow counters, named as Envoy names them.
#[derive(Debug)]
pub struct RbacStats {
    pub allowed: Counter,
    pub denied: Counter,
    pub shadow_allowed: Counter,
    pub shadow_denied: Counter,
}

/// Envoy's `statPrefixJoin`: `a` and `b` with one `.` between them.
fn join(a: &str, b: &str) -> String {
    if a.is_empty() {
        b.to_owned()
    } else if a.ends_with('.') {
        format!("{a}{b}")
    } else {
        format!("{a}.{b}")
    }
}

impl RbacStats {
    /// `scope` is the filter's stat scope: `http.<stat_prefix>.` for the HTTP filter,
    /// the network filter's `stat_prefix`.
    pub fn new(store: &Store, scope: &str, cfg: &RbacConfig) -> Self {
        let base = join(scope, "rbac.");
        let rules = join(&base, &cfg.rules_stat_prefix);
        let shadow = join(&base, &cfg.shadow_rules_stat_prefix);
        let c = |prefix: &str, name: &str| store.counter_tagged_by_default(join(prefix, name));
        RbacStats {
            allowed: c(&rules, "allowed"),
            denied: c(&rules, "denied"),
            shadow_allowed: c(&shadow, "shadow_allowed"),
            shadow_denied: c(&shadow, "shadow_denied"),
        }
    }
}

/// One RBAC filter's decision.
#[derive(Debug, Default)]
pub struct Decision<'a> {
    /// Whether the request or connection may go on.
    pub allowed: bool,
    /// The enforced policy that matched (for the reply details).
    pub policy: Option<&'a str>,
    /// The shadow rules' verdict and the shadow policy that matched, when there are
    /// shadow rules: the dynamic metadata the HTTP filter leaves (Istio's CUSTOM
    /// action reads it).
    pub shadow: Option<(bool, Option<&'a str>)>,
}

impl RbacConfig {
    /// Decides for `s`, counting.
    pub fn check(&self, s: &Subject<'_>, stats: &RbacStats) -> Decision<'_> {
        let shadow = self.shadow.as_ref().map(|shadow| {
            let (allowed, policy) = shadow.decide(s);
            if allowed {
                stats.shadow_allowed.inc();
            } else {
                stats.shadow_denied.inc();
            }
            (allowed, policy)
        });
        let Some(rules) = &self.rules else {
            return Decision {
                allowed: true,
                policy: None,
                shadow,
            };
        };
        let (allowed, policy) = rules.decide(s);
        if allowed {
            stats.allowed.inc();
        } else {
            stats.denied.inc();
        }
        Decision {
            allowed,
            policy,
            shadow,
        }
    }

    /// The dynamic metadata keys the HTTP filter writes the shadow decision under
    /// (`<shadow_rules_stat_prefix>shadow_effective_policy_id` / `…shadow_engine_result`).
    pub fn shadow_metadata(&self, shadow: (bool, Option<&str>)) -> Vec<(String, String)> {
        let p = &self.shadow_rules_stat_prefix;
        let mut out = Vec::with_capacity(2);
        if let Some(policy) = shadow.1 {
            out.push((format!("{p}shadow_effective_policy_id"), policy.to_owned()));
        }
        let result = if shadow.0 { "allowed" } else { "denied" };
        out.push((format!("{p}shadow_engine_result"), result.to_owned()));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::matchers::{HeaderMatch, StringMatch};

    fn subject<'a>(peer: &str, local: &str, req: Option<&'a RequestHead<'a>>) -> Subject<'a> {
        Subject {
            peer: peer.parse().unwrap(),
            remote: peer.parse().unwrap(),
            local: local.parse().unwrap(),
            server_name: None,
            peer_principal: None,
            request: req,
            metadata: None,
        }
    }

    fn rules(action: Action, policies: Vec<(&str, Policy)>) -> Rules {
        Rules {
            action,
            policies: policies
                .into_iter()
                .map(|(n, p)| (n.to_owned(), p))
                .collect(),
        }
    }

    fn exact(s: &str) -> StringMatcher {
        StringMatcher {
            kind: StringMatch::Exact(s.into()),
            ignore_case: false,
        }
    }

    #[test]
    fn allow_deny_and_log() {
        let from_ten = Policy {
            permissions: vec![Permission::DestinationPort(8080)],
            principals: vec![Principal::DirectRemoteIp(
                Cidr::new("10.0.0.0".parse().unwrap(), 8).unwrap(),
            )],
        };
        let s_ok = subject("10.1.2.3:5000", "10.9.9.9:8080", None);
        let s_other = subject("192.168.1.1:5000", "10.9.9.9:8080", None);
        let allow = rules(Action::Allow, vec![("ten", from_ten.clone())]);
        assert_eq!(allow.decide(&s_ok), (true, Some("ten")));
        assert_eq!(allow.decide(&s_other), (false, None));
        let deny = rules(Action::Deny, vec![("ten", from_ten.clone())]);
        assert_eq!(deny.decide(&s_ok), (false, Some("ten")));
        assert_eq!(deny.decide(&s_other), (true, None));
        let log = rules(Action::Log, vec![("ten", from_ten)]);
        assert!(log.decide(&s_ok).0 && log.decide(&s_other).0);
        // No policies: ALLOW refuses everything, DENY allows everything (as Envoy).
        assert!(!rules(Action::Allow, vec![]).decide(&s_ok).0);
        assert!(rules(Action::Deny, vec![]).decide(&s_ok).0);
    }

    #[test]
    fn request_matchers_and_connections() {
        let get_admin = Policy {
            permissions: vec![Permission::And(vec![
                Permission::Header(HeaderMatcher {
                    name: ":method".into(),
                    kind: HeaderMatch::String(exact("GET")),
                    invert: false,
                    treat_missing_as_empty: false,
                }),
                Permission::UrlPath(exact("/admin")),
            ])],
            principals: vec![Principal::Any],
        };
        let r = rules(Action::Deny, vec![("admin", get_admin)]);
        let headers = HeaderMap::new();
        let head = RequestHead {
            method: "GET",
            scheme: "http",
            authority: "x",
            path_and_query: "/admin?x=1",
            headers: &headers,
        };
        assert!(!r.decide(&subject("1.1.1.1:1", "2.2.2.2:80", Some(&head))).0);
        let other = RequestHead {
            path_and_query: "/admin/x",
            ..head
        };
        assert!(
            r.decide(&subject("1.1.1.1:1", "2.2.2.2:80", Some(&other)))
                .0
        );
        // On a connection, request matchers do not match.
        assert!(r.decide(&subject("1.1.1.1:1", "2.2.2.2:80", None)).0);
        // Without TLS nobody is authenticated.
        let mtls = rules(
            Action::Allow,
            vec![(
                "ns",
                Policy {
                    permissions: vec![Permission::Any],
                    principals: vec![Principal::Authenticated(None)],
                },
            )],
        );
        assert!(!mtls.decide(&subject("1.1.1.1:1", "2.2.2.2:80", None)).0);
        let mut with_id = subject("1.1.1.1:1", "2.2.2.2:80", None);
        with_id.peer_principal = Some("spiffe://cluster.local/ns/a/sa/b");
        assert!(mtls.decide(&with_id).0);
    }

    #[test]
    fn stat_names_follow_envoys_prefix_joining() {
        let store = Store::new();
        let cfg = RbacConfig {
            rules: None,
            shadow: None,
            rules_stat_prefix: String::new(),
            shadow_rules_stat_prefix: "istio_dry_run_allow_".into(),
        };
        let s = RbacStats::new(&store, "http.inbound_0.0.0.0_9080;.", &cfg);
        s.allowed.inc();
        s.shadow_denied.inc();
        let text = store.render_text(&Default::default());
        assert!(
            text.contains("http.inbound_0.0.0.0_9080;.rbac.allowed: 1\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "http.inbound_0.0.0.0_9080;.rbac.istio_dry_run_allow_.shadow_denied: 1\n"
            ),
            "{text}"
        );
        let net = RbacStats::new(&store, "tcp.", &cfg);
        net.denied.inc();
        assert!(
            store
                .render_text(&Default::default())
                .contains("tcp.rbac.denied: 1\n")
        );
    }
}
