//! `filter_chain_matcher`: the unified matcher (`xds.type.matcher.v3.Matcher`) choosing a
//! listener's filter chain by name from the connection's network inputs, with Envoy's
//! evaluation rules:
//!
//! - a map whose input has no value (no SNI, no ALPN) goes to its `on_no_match`;
//! - a hit whose nested matcher yields nothing falls back to the map's `on_no_match`
//!   (prefix maps first retry shorter prefixes, longest first);
//! - a list moves on to its next entry when a matched entry's nested matcher yields
//!   nothing;
//! - an IP range matcher tries the ranges holding the address longest first, skipping
//!   `exclusive` ones once a more specific range has failed.
//!
//! The result names a chain; a name no chain has closes the connection, and no result
//! at all means `default_filter_chain` (or a close without one).
use std::{collections::HashMap, net::SocketAddr};

use super::inspect::Facts;
use crate::{http::matchers::StringMatcher, net::cidr::Cidr};

/// A network input (`envoy.extensions.matching.common_inputs.network.v3.*Input`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    DestinationIp,
    DestinationPort,
    SourceIp,
    SourcePort,
    DirectSourceIp,
    SourceType,
    ServerName,
    TransportProtocol,
    ApplicationProtocol,
}

/// What a matcher ends in.
#[derive(Debug, Clone)]
pub enum OnMatch {
    Matcher(Box<ChainMatcher>),
    /// The chain's index, or `None` for a name no chain has.
    Chain(Option<usize>),
}

#[derive(Debug, Clone)]
pub struct ChainMatcher {
    pub kind: Kind,
    pub on_no_match: Option<Box<OnMatch>>,
}

#[derive(Debug, Clone)]
pub enum Kind {
    /// No `matcher_list` or `matcher_tree`: straight to `on_no_match`.
    Empty,
    List(Vec<(Predicate, OnMatch)>),
    Exact(Input, HashMap<String, OnMatch>),
    Prefix(Input, Vec<(String, OnMatch)>),
    /// `xds.type.matcher.v3.IPMatcher`: each range with its matcher's index, the
    /// matchers' `on_match` and `exclusive`.
    Ip {
        input: Input,
        ranges: Vec<(Cidr, usize)>,
        matchers: Vec<(OnMatch, bool)>,
    },
}

#[derive(Debug, Clone)]
pub enum Predicate {
    String(Input, StringMatcher),
    /// `envoy.extensions.matching.input_matchers.ip.v3.Ip`: the input is an address in
    /// one of the ranges.
    Ip(Input, Vec<Cidr>),
    Or(Vec<Predicate>),
    And(Vec<Predicate>),
    Not(Box<Predicate>),
}

/// The connection as the inputs see it.
pub struct Connection<'a> {
    pub facts: &'a Facts,
    pub src: SocketAddr,
    pub dst: SocketAddr,
}

/// The outcome for a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selected {
    Chain(usize),
    /// A chain name no chain has: the connection is closed.
    Unknown,
    /// Nothing matched: `default_filter_chain`.
    NoMatch,
}

impl Input {
    fn value(self, c: &Connection<'_>) -> Option<String> {
        Some(match self {
            Input::DestinationIp => c.dst.ip().to_string(),
            Input::DestinationPort => c.dst.port().to_string(),
            Input::SourceIp | Input::DirectSourceIp => c.src.ip().to_string(),
            Input::SourcePort => c.src.port().to_string(),
            Input::SourceType => {
                let local = c.src.ip().is_loopback() || c.src.ip() == c.dst.ip();
                return local.then(|| "local".to_owned());
            }
            Input::ServerName => return c.facts.server_name.clone().filter(|s| !s.is_empty()),
            Input::TransportProtocol => c.facts.transport.to_owned(),
            Input::ApplicationProtocol => {
                let p = &c.facts.application_protocols;
                if p.is_empty() {
                    return None;
                }
                format!("'{}'", p.join("','"))
            }
        })
    }

    /// Whether a listener filter has to look at the connection's first bytes first.
    fn needs_inspection(self) -> bool {
        matches!(
            self,
            Input::ServerName | Input::TransportProtocol | Input::ApplicationProtocol
        )
    }
}

impl OnMatch {
    fn eval(&self, c: &Connection<'_>) -> Option<Selected> {
        match self {
            OnMatch::Chain(Some(i)) => Some(Selected::Chain(*i)),
            OnMatch::Chain(None) => Some(Selected::Unknown),
            OnMatch::Matcher(m) => m.eval(c),
        }
    }

    fn needs_inspection(&self) -> bool {
        matches!(self, OnMatch::Matcher(m) if m.needs_inspection())
    }
}

impl ChainMatcher {
    /// The chain for a connection.
    pub fn select(&self, c: &Connection<'_>) -> Selected {
        self.eval(c).unwrap_or(Selected::NoMatch)
    }

    fn no_match(&self, c: &Connection<'_>) -> Option<Selected> {
        self.on_no_match.as_ref().and_then(|m| m.eval(c))
    }

    fn eval(&self, c: &Connection<'_>) -> Option<Selected> {
        match &self.kind {
            Kind::Empty => self.no_match(c),
            Kind::List(entries) => entries
                .iter()
                .filter(|(p, _)| p.matches(c))
                .find_map(|(_, m)| m.eval(c))
                .or_else(|| self.no_match(c)),
            Kind::Exact(input, map) => match input.value(c) {
                None => self.no_match(c),
                Some(v) => map
                    .get(&v)
                    .and_then(|m| m.eval(c))
                    .or_else(|| self.no_match(c)),
            },
            Kind::Prefix(input, entries) => match input.value(c) {
                None => self.no_match(c),
                Some(v) => {
                    let mut hits: Vec<&(String, OnMatch)> =
                        entries.iter().filter(|(p, _)| v.starts_with(p)).collect();
                    hits.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
                    hits.iter()
                        .find_map(|(_, m)| m.eval(c))
                        .or_else(|| self.no_match(c))
                }
            },
            Kind::Ip {
                input,
                ranges,
                matchers,
            } => {
                let Some(ip) = input.value(c).and_then(|v| v.parse().ok()) else {
                    return self.no_match(c);
                };
                let mut hits: Vec<(u8, usize)> = ranges
                    .iter()
                    .filter(|(r, _)| r.contains(ip))
                    .map(|(r, m)| (r.len, *m))
                    .collect();
                // Longest prefix first; ties in declaration order (the sort is stable).
                hits.sort_by_key(|(len, _)| std::cmp::Reverse(*len));
                let mut failed = false;
                for (_, m) in hits {
                    let (on_match, exclusive) = &matchers[m];
                    if failed && *exclusive {
                        continue;
                    }
                    match on_match.eval(c) {
                        Some(s) => return Some(s),
                        None => failed = true,
                    }
                }
                self.no_match(c)
            }
        }
    }

    /// Whether any input needs the listener filters' findings (SNI, transport, ALPN).
    pub fn needs_inspection(&self) -> bool {
        let nested = |m: &OnMatch| m.needs_inspection();
        let own = match &self.kind {
            Kind::Empty => false,
            Kind::List(entries) => entries
                .iter()
                .any(|(p, m)| p.needs_inspection() || nested(m)),
            Kind::Exact(input, map) => input.needs_inspection() || map.values().any(nested),
            Kind::Prefix(input, entries) => {
                input.needs_inspection() || entries.iter().any(|(_, m)| nested(m))
            }
            Kind::Ip {
                input, matchers, ..
            } => input.needs_inspection() || matchers.iter().any(|(m, _)| nested(m)),
        };
        own || self.on_no_match.as_ref().is_some_and(|m| nested(m))
    }
}

impl Predicate {
    fn matches(&self, c: &Connection<'_>) -> bool {
        match self {
            Predicate::String(input, m) => input.value(c).is_some_and(|v| m.matches(&v)),
            Predicate::Ip(input, ranges) => input
                .value(c)
                .and_then(|v| v.parse().ok())
                .is_some_and(|ip| ranges.iter().any(|r| r.contains(ip))),
            Predicate::Or(all) => all.iter().any(|p| p.matches(c)),
            Predicate::And(all) => all.iter().all(|p| p.matches(c)),
            Predicate::Not(p) => !p.matches(c),
        }
    }

    fn needs_inspection(&self) -> bool {
        match self {
            Predicate::String(i, _) | Predicate::Ip(i, _) => i.needs_inspection(),
            Predicate::Or(all) | Predicate::And(all) => all.iter().any(Predicate::needs_inspection),
            Predicate::Not(p) => p.needs_inspection(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::matchers::StringMatch;

    fn chain(i: usize) -> OnMatch {
        OnMatch::Chain(Some(i))
    }

    fn conn<'a>(facts: &'a Facts, dst: &str) -> Connection<'a> {
        Connection {
            facts,
            src: "10.0.0.9:40000".parse().unwrap(),
            dst: dst.parse().unwrap(),
        }
    }

    fn nested(kind: Kind, on_no_match: Option<OnMatch>) -> OnMatch {
        OnMatch::Matcher(Box::new(ChainMatcher {
            kind,
            on_no_match: on_no_match.map(Box::new),
        }))
    }

    #[test]
    fn istio_waypoint_shape_ip_then_port_then_alpn() {
        let ports = Kind::Exact(
            Input::DestinationPort,
            [("8000".to_owned(), chain(0))].into_iter().collect(),
        );
        let alpn = Kind::Exact(
            Input::ApplicationProtocol,
            [
                ("'h2c'".to_owned(), chain(1)),
                ("'http/1.1'".to_owned(), chain(1)),
            ]
            .into_iter()
            .collect(),
        );
        let m = ChainMatcher {
            kind: Kind::Ip {
                input: Input::DestinationIp,
                ranges: vec![
                    (Cidr::new("10.1.0.1".parse().unwrap(), 32).unwrap(), 0),
                    (Cidr::new("10.2.0.0".parse().unwrap(), 16).unwrap(), 1),
                ],
                matchers: vec![
                    (nested(ports, None), false),
                    (nested(alpn, Some(chain(2))), false),
                ],
            },
            on_no_match: None,
        };
        let plain = Facts::default();
        let h1 = Facts {
            application_protocols: vec!["http/1.1".into()],
            ..Facts::default()
        };
        assert_eq!(m.select(&conn(&plain, "10.1.0.1:8000")), Selected::Chain(0));
        assert_eq!(m.select(&conn(&plain, "10.1.0.1:9000")), Selected::NoMatch);
        assert_eq!(m.select(&conn(&h1, "10.2.3.4:1")), Selected::Chain(1));
        assert_eq!(m.select(&conn(&plain, "10.2.3.4:1")), Selected::Chain(2));
        assert_eq!(m.select(&conn(&plain, "10.9.0.1:1")), Selected::NoMatch);
        assert!(m.needs_inspection());
    }

    #[test]
    fn fallbacks_follow_envoy() {
        // A /32 whose nested matcher misses falls back to the /16, unless exclusive.
        let miss = || nested(Kind::Exact(Input::DestinationPort, HashMap::new()), None);
        let ranges = vec![
            (Cidr::new("10.1.0.1".parse().unwrap(), 32).unwrap(), 0),
            (Cidr::new("10.1.0.0".parse().unwrap(), 16).unwrap(), 1),
        ];
        let with = |exclusive: bool| ChainMatcher {
            kind: Kind::Ip {
                input: Input::DestinationIp,
                ranges: ranges.clone(),
                matchers: vec![(miss(), false), (chain(5), exclusive)],
            },
            on_no_match: Some(Box::new(chain(9))),
        };
        let f = Facts::default();
        assert_eq!(
            with(false).select(&conn(&f, "10.1.0.1:1")),
            Selected::Chain(5)
        );
        assert_eq!(
            with(true).select(&conn(&f, "10.1.0.1:1")),
            Selected::Chain(9)
        );
        // An absent SNI goes to on_no_match; a negated predicate on it is true.
        let sni = |s: &str| StringMatcher {
            kind: StringMatch::Exact(s.into()),
            ignore_case: false,
        };
        let m = ChainMatcher {
            kind: Kind::List(vec![
                (
                    Predicate::String(Input::ServerName, sni("a.example")),
                    chain(1),
                ),
                (
                    Predicate::Not(Box::new(Predicate::String(
                        Input::ServerName,
                        sni("b.example"),
                    ))),
                    chain(2),
                ),
            ]),
            on_no_match: Some(Box::new(OnMatch::Chain(None))),
        };
        assert_eq!(m.select(&conn(&f, "1.1.1.1:1")), Selected::Chain(2));
        let b = Facts {
            server_name: Some("b.example".into()),
            ..Facts::default()
        };
        assert_eq!(m.select(&conn(&b, "1.1.1.1:1")), Selected::Unknown);
        // Prefix maps retry shorter prefixes.
        let p = ChainMatcher {
            kind: Kind::Prefix(
                Input::ServerName,
                vec![("a".into(), chain(3)), ("a.ex".into(), miss())],
            ),
            on_no_match: None,
        };
        let a = Facts {
            server_name: Some("a.example".into()),
            ..Facts::default()
        };
        assert_eq!(p.select(&conn(&a, "1.1.1.1:1")), Selected::Chain(3));
    }
}
