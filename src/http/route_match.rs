//! Virtual host selection and route matching, in Envoy's order: exact domain, then the
//! longest `*suffix` wildcard, then the longest `prefix*` wildcard, then `*`; within a
//! virtual host the first route whose path, headers, query parameters, gRPC and runtime
//! fraction all match wins.
use std::{collections::HashMap, sync::Arc, time::Duration};

use super::{
    hash_policy::HashPolicy, header_mutation::HeaderMutations, matchers::RequestHead,
    mirror::MirrorPolicy, retry::RetryPolicy,
};
use crate::{
    config::{
        ClusterSpec, DirectResponse, FilterOverride, GrpcTimeout, Headers, PathMatch, PerFilter,
        Redirect, Rewrite, RouteAction, RouteMatch, RouteTable,
    },
    http::matchers::HeaderMatcher,
    telemetry::{scopes::VclusterStats, stats::Store},
    upstream::{Cluster, manager::ClusterMap},
};

#[derive(Debug)]
pub struct Route {
    pub name: String,
    pub decorator: Option<crate::config::tracing::Decorator>,
    pub matcher: RouteMatch,
    pub action: Action,
    pub headers: Headers,
    per_filter: PerFilter,
}

/// The route's action with clusters resolved.
#[derive(Debug)]
pub enum Action {
    Forward {
        clusters: Clusters,
        rewrite: Rewrite,
        timeout: Option<Duration>,
        upgrades: Vec<(String, bool)>,
        idle_timeout: Option<Duration>,
        grpc_timeout: Option<GrpcTimeout>,
        retry: Option<Arc<RetryPolicy>>,
        mirrors: Vec<MirrorPolicy>,
        max_stream_duration: Option<Duration>,
        hash_policy: Option<Arc<HashPolicy>>,
    },
    Redirect(Redirect),
    Direct(DirectResponse),
}

/// The route's cluster, or its weighted clusters with the running total of weights.
/// Clusters are named, and looked up in the current cluster set per request (as Envoy
/// does), so clusters added or removed by CDS take effect without a route update.
#[derive(Debug)]
pub enum Clusters {
    Single(String),
    /// `cluster_header`: the cluster the request header names.
    Header(http::HeaderName),
    Weighted {
        /// Each cluster with the cumulative weight up to and including it, and its
        /// header mutations.
        clusters: Vec<(String, u64, Headers)>,
        total: u64,
    },
}

#[derive(Debug)]
pub struct VirtualHost {
    pub name: String,
    routes: Vec<Route>,
    headers: Headers,
    per_filter: PerFilter,
    /// `include_request_attempt_count`, `include_attempt_count_in_response`.
    pub attempt_count: (bool, bool),
    /// `virtual_clusters` in order, then Envoy's catch-all `other` (only when there
    /// are any).
    vclusters: Vec<(Vec<HeaderMatcher>, Arc<VclusterStats>)>,
    other: Option<Arc<VclusterStats>>,
}

impl VirtualHost {
    /// The virtual cluster a request is counted in: the first whose headers all match,
    /// else `other`; none when the virtual host defines none.
    pub fn virtual_cluster(&self, req: &RequestHead<'_>) -> Option<&Arc<VclusterStats>> {
        self.vclusters
            .iter()
            .find(|(headers, _)| headers.iter().all(|m| m.matches(req)))
            .map(|(_, stats)| stats)
            .or(self.other.as_ref())
    }
}

/// A routing decision: the virtual host and route, and the cluster picked for this
/// request (with its weighted-cluster header mutations, if any).
#[derive(Debug, Clone)]
pub struct Matched<'a> {
    table: &'a Routes,
    vhost: &'a VirtualHost,
    pub route: &'a Route,
    pub target: Target<'a>,
    weighted: Option<&'a Headers>,
}

impl Matched<'_> {
    /// The virtual cluster the request counts in, if its virtual host has any.
    pub fn virtual_cluster(&self, req: &RequestHead<'_>) -> Option<Arc<VclusterStats>> {
        self.vhost.virtual_cluster(req).cloned()
    }
}

/// What to do with the request: forward to the picked cluster, or answer locally.
#[derive(Debug, Clone)]
pub enum Target<'a> {
    Forward {
        cluster: Arc<Cluster>,
        rewrite: &'a Rewrite,
        timeout: Option<Duration>,
        /// The route's upgrade overrides.
        upgrades: &'a [(String, bool)],
        idle_timeout: Option<Duration>,
        grpc_timeout: Option<GrpcTimeout>,
        retry: Option<&'a RetryPolicy>,
        mirrors: &'a [MirrorPolicy],
        max_stream_duration: Option<Duration>,
        hash_policy: Option<&'a HashPolicy>,
    },
    Redirect(&'a Redirect),
    Direct(&'a DirectResponse),
    /// The cluster named is not in the current set (Envoy's NC).
    NoCluster,
}

impl<'a> Matched<'a> {
    /// The per-route config of the HTTP filter named `filter`: the route's, else the
    /// virtual host's, else the route configuration's.
    pub fn filter_override(&self, filter: &str) -> Option<&'a FilterOverride> {
        [
            &self.route.per_filter,
            &self.vhost.per_filter,
            &self.table.per_filter,
        ]
        .into_iter()
        .find_map(|p| p.iter().find(|(n, _)| n == filter).map(|(_, o)| o))
    }

    /// The virtual host's `include_request_attempt_count` and
    /// `include_attempt_count_in_response`.
    pub fn attempt_count(&self) -> (bool, bool) {
        self.vhost.attempt_count
    }

    /// The cluster picked for this request; `None` for redirects and direct responses.
    pub fn cluster(&self) -> Option<&Arc<Cluster>> {
        match &self.target {
            Target::Forward { cluster, .. } => Some(cluster),
            _ => None,
        }
    }
}

impl<'a> Matched<'a> {
    /// The header mutation levels for the request (or response), in the order they
    /// apply: weighted cluster, route, virtual host, route configuration; reversed with
    /// `most_specific_header_mutations_wins`.
    pub fn header_levels(&self, request: bool) -> impl Iterator<Item = &'a HeaderMutations> {
        let pick = move |h: &'a Headers| if request { &h.request } else { &h.response };
        let mut levels = [
            self.weighted.map(pick),
            Some(pick(&self.route.headers)),
            Some(pick(&self.vhost.headers)),
            Some(pick(&self.table.headers)),
        ];
        if self.table.most_specific_wins {
            levels.reverse();
        }
        levels.into_iter().flatten().filter(|m| !m.is_empty())
    }
}

/// A compiled route table with clusters resolved.
#[derive(Debug, Default)]
pub struct Routes {
    hosts: Vec<VirtualHost>,
    headers: Headers,
    most_specific_wins: bool,
    per_filter: PerFilter,
    /// `ignore_port_in_host_matching`.
    ignore_port: bool,
    exact: HashMap<String, usize>,
    /// `*suffix` domains (stored without the `*`), longest first.
    suffixes: Vec<(String, usize)>,
    /// `prefix*` domains (stored without the `*`), longest first.
    prefixes: Vec<(String, usize)>,
    any: Option<usize>,
}

impl Routes {
    /// Builds the table. Cluster names are checked where the config is compiled
    /// (`validate_clusters`), not here.
    pub fn new(table: &RouteTable, store: &Arc<Store>) -> Result<Self, String> {
        let mut out = Routes {
            headers: table.headers.clone(),
            most_specific_wins: table.most_specific_wins,
            per_filter: table.per_filter.clone(),
            ignore_port: table.ignore_port_in_host_matching,
            ..Routes::default()
        };
        for (i, vh) in table.virtual_hosts.iter().enumerate() {
            let mut routes = Vec::with_capacity(vh.routes.len());
            for r in &vh.routes {
                let action = match &r.action {
                    RouteAction::Forward(f) => Action::Forward {
                        clusters: match &f.cluster {
                            ClusterSpec::Single(c) => Clusters::Single(c.clone()),
                            ClusterSpec::Header(h) => Clusters::Header(
                                http::HeaderName::from_bytes(h.as_bytes())
                                    .map_err(|_| format!("'{h}' is not a header name"))?,
                            ),
                            ClusterSpec::Weighted(w) => {
                                let mut total = 0;
                                let mut list = Vec::with_capacity(w.len());
                                for t in w {
                                    total += u64::from(t.weight);
                                    list.push((t.name.clone(), total, t.headers.clone()));
                                }
                                Clusters::Weighted {
                                    clusters: list,
                                    total,
                                }
                            }
                        },
                        rewrite: f.rewrite.clone(),
                        timeout: f.timeout,
                        upgrades: f.upgrades.clone(),
                        idle_timeout: f.idle_timeout,
                        grpc_timeout: f.grpc_timeout,
                        retry: f.retry.clone(),
                        mirrors: f.mirrors.clone(),
                        max_stream_duration: f.max_stream_duration,
                        hash_policy: f.hash_policy.clone(),
                    },
                    RouteAction::Redirect(r) => Action::Redirect(r.clone()),
                    RouteAction::Direct(d) => Action::Direct(d.clone()),
                };
                routes.push(Route {
                    name: r.name.clone(),
                    decorator: r.decorator.clone(),
                    matcher: r.matcher.clone(),
                    action,
                    headers: r.headers.clone(),
                    per_filter: r.per_filter.clone(),
                });
            }
            out.hosts.push(VirtualHost {
                name: vh.name.clone(),
                routes,
                headers: vh.headers.clone(),
                per_filter: vh.per_filter.clone(),
                attempt_count: (vh.attempt_count_request, vh.attempt_count_response),
                vclusters: vh
                    .virtual_clusters
                    .iter()
                    .map(|vc| {
                        let stats = VclusterStats::new(store, &vh.name, &vc.name);
                        (vc.headers.clone(), Arc::new(stats))
                    })
                    .collect(),
                other: (!vh.virtual_clusters.is_empty())
                    .then(|| Arc::new(VclusterStats::new(store, &vh.name, "other"))),
            });
            for d in &vh.domains {
                if d == "*" {
                    out.any = Some(i);
                } else if let Some(s) = d.strip_prefix('*') {
                    out.suffixes.push((s.to_owned(), i));
                } else if let Some(p) = d.strip_suffix('*') {
                    out.prefixes.push((p.to_owned(), i));
                } else {
                    out.exact.insert(d.clone(), i);
                }
            }
        }
        out.suffixes.sort_by_key(|s| std::cmp::Reverse(s.0.len()));
        out.prefixes.sort_by_key(|p| std::cmp::Reverse(p.0.len()));
        Ok(out)
    }

    /// The virtual host for a `Host`/`:authority` value.
    pub fn virtual_host(&self, host: &str) -> Option<&VirtualHost> {
        let host = if self.ignore_port {
            strip_port(host)
        } else {
            host
        };
        let lower;
        let host = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            lower = host.to_ascii_lowercase();
            lower.as_str()
        } else {
            host
        };
        let i = self
            .exact
            .get(host)
            .copied()
            .or_else(|| {
                self.suffixes
                    .iter()
                    .find(|(s, _)| host.len() > s.len() && host.ends_with(s.as_str()))
                    .map(|(_, i)| *i)
            })
            .or_else(|| {
                self.prefixes
                    .iter()
                    .find(|(p, _)| host.len() > p.len() && host.starts_with(p.as_str()))
                    .map(|(_, i)| *i)
            })
            .or(self.any)?;
        Some(&self.hosts[i])
    }

    /// The route for a request and the cluster it picks from `clusters`, or `None`
    /// (Envoy's NR).
    pub fn route(&self, req: &RequestHead<'_>, clusters: &ClusterMap) -> Option<Matched<'_>> {
        // A CONNECT matches only a route with a `connect_matcher`, which pilotfish does
        // not take: it is never routed (404 NR, as Envoy answers it then).
        if req.method == "CONNECT" {
            return None;
        }
        let vhost = self.virtual_host(req.authority)?;
        let route = vhost.routes.iter().find(|r| r.matches(req))?;
        let (target, weighted) = match &route.action {
            Action::Forward {
                clusters: targets,
                rewrite,
                timeout,
                upgrades,
                idle_timeout,
                grpc_timeout,
                retry,
                mirrors,
                max_stream_duration,
                hash_policy,
            } => match targets.pick(req.headers, clusters) {
                Some((cluster, w)) => {
                    let target = Target::Forward {
                        cluster: cluster.clone(),
                        rewrite,
                        timeout: *timeout,
                        upgrades,
                        idle_timeout: *idle_timeout,
                        grpc_timeout: *grpc_timeout,
                        retry: retry.as_deref(),
                        mirrors,
                        max_stream_duration: *max_stream_duration,
                        hash_policy: hash_policy.as_deref(),
                    };
                    (target, w)
                }
                None => (Target::NoCluster, None),
            },
            Action::Redirect(r) => (Target::Redirect(r), None),
            Action::Direct(d) => (Target::Direct(d), None),
        };
        Some(Matched {
            table: self,
            vhost,
            route,
            target,
            weighted,
        })
    }
}

/// `host[:port]` without the port (`[v6]:port` keeps its brackets).
fn strip_port(host: &str) -> &str {
    match host.rfind(':') {
        Some(i)
            if !host[i + 1..].is_empty() && host[i + 1..].bytes().all(|b| b.is_ascii_digit()) =>
        {
            let h = &host[..i];
            if h.starts_with('[') || !h.contains(':') {
                h
            } else {
                host
            }
        }
        _ => host,
    }
}

impl Route {
    fn matches(&self, req: &RequestHead<'_>) -> bool {
        self.matcher.matches(req)
    }
}

impl RouteMatch {
    /// Whether a request matches (also how jwt_authn's `rules` pick a requirement).
    pub fn matches(&self, req: &RequestHead<'_>) -> bool {
        let m = self;
        let (path, query) = match req.path_and_query.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (req.path_and_query, None),
        };
        let path_ok = match &m.path {
            PathMatch::Prefix(p) => starts_with(path, p, m.case_sensitive),
            PathMatch::Path(p) => path.len() == p.len() && starts_with(path, p, m.case_sensitive),
            PathMatch::SeparatedPrefix(p) => {
                starts_with(path, p, m.case_sensitive)
                    && matches!(path.as_bytes().get(p.len()), None | Some(b'/'))
            }
            PathMatch::Regex(r) => r.is_match(path),
        };
        path_ok
            && m.headers.iter().all(|h| h.matches(req))
            && m.query_parameters.iter().all(|q| q.matches(query))
            && (!m.grpc || super::headers::is_grpc(req.headers))
            && m.per_million.is_none_or(|n| fastrand::u32(..1_000_000) < n)
    }
}

impl Clusters {
    /// The cluster for one request: the route's cluster, the one its `cluster_header`
    /// names, or a weighted pick as Envoy makes it (a random value below the total
    /// weight, then the first cluster whose cumulative weight exceeds it), with that
    /// weighted cluster's header mutations. `None` when the header names no cluster.
    /// `None` when the cluster chosen is not in `all`.
    fn pick<'a, 'c>(
        &'a self,
        headers: &http::HeaderMap,
        all: &'c ClusterMap,
    ) -> Option<(&'c Arc<Cluster>, Option<&'a Headers>)> {
        match self {
            Clusters::Single(c) => all.get(c).map(|c| (c, None)),
            Clusters::Header(name) => headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| all.get(v))
                .map(|c| (c, None)),
            Clusters::Weighted { clusters, total } => {
                let v = fastrand::u64(..*total);
                let (c, _, h) = clusters
                    .iter()
                    .find(|(_, end, _)| v < *end)
                    .unwrap_or(&clusters[clusters.len() - 1]);
                all.get(c).map(|c| (c, Some(h)))
            }
        }
    }
}

fn starts_with(path: &str, prefix: &str, case_sensitive: bool) -> bool {
    path.len() >= prefix.len()
        && if case_sensitive {
            path.as_bytes().starts_with(prefix.as_bytes())
        } else {
            path.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
        }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        config::{self, ClusterConfig, Discovery, DnsFamily, UpstreamProtocol},
        telemetry::stats::Store,
    };

    fn manager() -> &'static ClusterMap {
        static MAP: std::sync::LazyLock<ClusterMap> = std::sync::LazyLock::new(build_map);
        &MAP
    }

    fn build_map() -> ClusterMap {
        let c = |name: &str| ClusterConfig {
            name: name.into(),
            discovery: Discovery::Static,
            connect_timeout: Duration::from_secs(1),
            protocol: UpstreamProtocol::Http1,
            dns_refresh_rate: Duration::from_secs(5),
            dns_family: DnsFamily::Auto,
            endpoints: vec![],
            original_dst_header: None,
            upstream_socket: Default::default(),
            eds: None,
            ..Default::default()
        };
        let m = crate::upstream::ClusterManager::new(
            &[c("a"), c("b"), c("c"), c("d"), c("e")],
            &Store::new(),
        );
        (*m.snapshot()).clone()
    }

    fn route(path: PathMatch, cluster: &str, case_sensitive: bool) -> config::Route {
        config::Route {
            decorator: None,
            name: String::new(),
            matcher: RouteMatch {
                case_sensitive,
                ..RouteMatch::path(path)
            },
            action: RouteAction::Forward(config::Forward::to(ClusterSpec::Single(cluster.into()))),
            headers: Headers::default(),
            per_filter: Vec::new(),
        }
    }

    /// The cluster chosen for a request with these headers.
    fn pick(t: &Routes, host: &str, path: &str, headers: &[(&str, &str)]) -> Option<String> {
        let mut map = http::HeaderMap::new();
        for (k, v) in headers {
            map.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        let req = RequestHead {
            method: "GET",
            scheme: "http",
            authority: host,
            path_and_query: path,
            headers: &map,
        };
        t.route(&req, manager())
            .and_then(|m| m.cluster().map(|c| c.name().to_owned()))
    }

    fn vh(name: &str, domains: &[&str], routes: Vec<config::Route>) -> config::VirtualHost {
        config::VirtualHost {
            name: name.into(),
            domains: domains.iter().map(|d| d.to_string()).collect(),
            routes,
            headers: Headers::default(),
            per_filter: Vec::new(),
            attempt_count_request: false,
            attempt_count_response: false,
            virtual_clusters: Vec::new(),
        }
    }

    fn table() -> Routes {
        let t = RouteTable {
            name: "t".into(),
            virtual_hosts: vec![
                vh(
                    "exact",
                    &["api.example.com", "api.example.com:8080"],
                    vec![
                        route(PathMatch::Path("/exact".into()), "a", true),
                        route(PathMatch::Prefix("/v1".into()), "b", true),
                        route(PathMatch::Prefix("/".into()), "c", true),
                    ],
                ),
                vh(
                    "suffix-long",
                    &["*.svc.example.com"],
                    vec![route(PathMatch::Prefix("/".into()), "b", true)],
                ),
                vh(
                    "suffix",
                    &["*.example.com"],
                    vec![route(PathMatch::Prefix("/".into()), "c", true)],
                ),
                vh(
                    "prefix",
                    &["www.*"],
                    vec![route(PathMatch::Prefix("/".into()), "d", true)],
                ),
                vh(
                    "any",
                    &["*"],
                    vec![
                        route(PathMatch::Prefix("/CaseLess".into()), "e", false),
                        route(PathMatch::Path("/p".into()), "a", false),
                    ],
                ),
            ],
            ..Default::default()
        };
        Routes::new(&t, &Store::new()).unwrap()
    }

    #[test]
    fn matches_as_envoy_does() {
        let t = table();
        let cases: &[(&str, &str, Option<&str>)] = &[
            ("api.example.com", "/exact", Some("a")),
            ("api.example.com", "/exact?x=1", Some("a")),
            ("api.example.com", "/exact/more", Some("c")),
            ("api.example.com", "/v1/users", Some("b")),
            ("api.example.com", "/v10", Some("b")),
            ("api.example.com", "/V1", Some("c")),
            ("API.Example.COM", "/v1", Some("b")),
            ("api.example.com:8080", "/v1", Some("b")),
            ("x.svc.example.com", "/", Some("b")),
            ("y.example.com", "/", Some("c")),
            (".example.com", "/", None),
            ("www.other.org", "/", Some("d")),
            ("www.", "/caseless", Some("e")),
            ("other", "/caseless/x", Some("e")),
            ("other", "/CASELESS", Some("e")),
            ("other", "/P", Some("a")),
            ("other", "/p/", None),
            ("other", "/nothing", None),
            ("api.example.com:9090", "/", None),
            ("API.EXAMPLE.COM:8080", "/v1", Some("b")),
            ("a.b.svc.example.com", "/", Some("b")),
            ("svc.example.com", "/", Some("c")),
            // A suffix wildcard beats a prefix wildcard.
            ("www.example.com", "/", Some("c")),
            ("www.other", "/x", Some("d")),
            ("api.example.com", "/exact/", Some("c")),
            ("api.example.com", "/v1?x", Some("b")),
            ("", "/p", Some("a")),
            ("other", "/caseless?q", Some("e")),
            ("other", "/Caseless", Some("e")),
            ("other", "/cas", None),
            ("www.", "/p", Some("a")),
        ];
        for (host, path, want) in cases {
            let got = pick(&t, host, path, &[]);
            assert_eq!(got.as_deref(), *want, "host={host} path={path}");
        }
    }

    #[test]
    fn a_cluster_not_in_the_current_set_is_no_cluster() {
        let t = Routes::new(
            &RouteTable {
                name: "t".into(),
                virtual_hosts: vec![vh(
                    "v",
                    &["*"],
                    vec![route(PathMatch::Prefix("/".into()), "zz", true)],
                )],
                ..Default::default()
            },
            &Store::new(),
        )
        .unwrap();
        let map = http::HeaderMap::new();
        let req = RequestHead {
            method: "GET",
            scheme: "http",
            authority: "h",
            path_and_query: "/",
            headers: &map,
        };
        let m = t.route(&req, manager()).unwrap();
        assert!(matches!(m.target, Target::NoCluster));
    }

    fn matcher_table() -> Routes {
        use crate::http::matchers::{
            HeaderMatch, HeaderMatcher, QueryParameterMatcher, StringMatch, StringMatcher,
            full_match_regex,
        };
        let exact = |v: &str| StringMatcher {
            kind: StringMatch::Exact(v.into()),
            ignore_case: false,
        };
        let header = |name: &str, kind: HeaderMatch, invert: bool| HeaderMatcher {
            name: name.into(),
            kind,
            invert,
            treat_missing_as_empty: false,
        };
        let with = |m: RouteMatch, cluster: &str| config::Route {
            matcher: m,
            ..route(PathMatch::Prefix(String::new()), cluster, true)
        };
        let prefix = |p: &str| RouteMatch::path(PathMatch::Prefix(p.into()));
        let routes = vec![
            with(
                RouteMatch {
                    headers: vec![header(
                        "end-user",
                        HeaderMatch::String(exact("jason")),
                        false,
                    )],
                    ..prefix("/")
                },
                "b",
            ),
            with(
                RouteMatch {
                    headers: vec![header(":method", HeaderMatch::String(exact("POST")), false)],
                    ..prefix("/")
                },
                "c",
            ),
            with(
                RouteMatch {
                    query_parameters: vec![QueryParameterMatcher {
                        name: "debug".into(),
                        kind: crate::http::matchers::QueryMatch::Present,
                    }],
                    ..prefix("/")
                },
                "d",
            ),
            with(
                RouteMatch {
                    grpc: true,
                    ..prefix("/")
                },
                "e",
            ),
            with(
                RouteMatch::path(PathMatch::Regex(full_match_regex("/item/[0-9]+").unwrap())),
                "a",
            ),
            with(
                RouteMatch::path(PathMatch::SeparatedPrefix("/api".into())),
                "b",
            ),
            with(
                RouteMatch {
                    headers: vec![header("x-skip", HeaderMatch::Present(true), true)],
                    per_million: Some(0),
                    ..prefix("/never")
                },
                "d",
            ),
            with(
                RouteMatch {
                    per_million: Some(1_000_000),
                    ..prefix("/always")
                },
                "c",
            ),
            with(
                RouteMatch {
                    headers: vec![header("x-version", HeaderMatch::String(exact("v2")), true)],
                    ..prefix("/inv")
                },
                "d",
            ),
            with(prefix("/"), "a"),
        ];
        Routes::new(
            &RouteTable {
                name: "m".into(),
                virtual_hosts: vec![vh("m", &["*"], routes)],
                ..Default::default()
            },
            &Store::new(),
        )
        .unwrap()
    }

    #[test]
    fn header_query_grpc_regex_and_fraction_matches() {
        let t = matcher_table();
        type Headers = &'static [(&'static str, &'static str)];
        let cases: &[(&str, Headers, &str)] = &[
            ("/", &[("end-user", "jason")], "b"),
            ("/", &[("end-user", "Jason")], "a"),
            ("/", &[("end-user", "x"), ("end-user", "jason")], "b"),
            ("/x?debug", &[], "d"),
            ("/x?a=1&debug=1", &[], "d"),
            ("/x?debugging=1", &[], "a"),
            ("/debug", &[], "a"),
            (
                "/svc.Greeter/Hi",
                &[("content-type", "application/grpc")],
                "e",
            ),
            (
                "/svc.Greeter/Hi",
                &[("content-type", "application/grpc+proto")],
                "e",
            ),
            (
                "/svc.Greeter/Hi",
                &[("content-type", "application/json")],
                "a",
            ),
            ("/item/42", &[], "a"),
            ("/item/42?x=y", &[], "a"),
            ("/item/42/x", &[], "a"),
            ("/item/x", &[], "a"),
            ("/api", &[], "b"),
            ("/api/", &[], "b"),
            ("/api/v1", &[], "b"),
            ("/api?x", &[], "b"),
            ("/apiv1", &[], "a"),
            ("/never", &[], "a"),
            ("/always", &[], "c"),
            ("/inv", &[], "a"),
            ("/inv", &[("x-version", "v1")], "d"),
            ("/inv", &[("x-version", "v2")], "a"),
        ];
        for (path, headers, want) in cases {
            assert_eq!(
                pick(&t, "h", path, headers).as_deref(),
                Some(*want),
                "path={path} headers={headers:?}"
            );
        }
    }

    #[test]
    fn method_pseudo_header_is_matched() {
        let t = matcher_table();
        let map = http::HeaderMap::new();
        let req = RequestHead {
            method: "POST",
            scheme: "http",
            authority: "h",
            path_and_query: "/",
            headers: &map,
        };
        assert_eq!(
            t.route(&req, manager()).unwrap().cluster().unwrap().name(),
            "c"
        );
    }

    /// 75/25 over 100,000 picks: the standard deviation is about 137 picks, so the
    /// ±1,500 band is more than ten deviations wide and never fails by chance.
    #[test]
    fn weighted_clusters_split_in_proportion() {
        let t = Routes::new(
            &RouteTable {
                name: "w".into(),
                virtual_hosts: vec![vh(
                    "w",
                    &["*"],
                    vec![config::Route {
                        action: RouteAction::Forward(config::Forward::to(ClusterSpec::Weighted(
                            vec![
                                config::WeightedTarget::new("a", 75),
                                config::WeightedTarget::new("b", 25),
                            ],
                        ))),
                        ..route(PathMatch::Prefix("/".into()), "a", true)
                    }],
                )],
                ..Default::default()
            },
            &Store::new(),
        )
        .unwrap();
        let n = 100_000;
        let a = (0..n)
            .filter(|_| pick(&t, "h", "/", &[]).as_deref() == Some("a"))
            .count();
        assert!((73_500..=76_500).contains(&a), "{a} of {n} went to a");
    }

    #[test]
    fn ports_can_be_ignored_in_host_matching() {
        assert_eq!(strip_port("reviews:9080"), "reviews");
        assert_eq!(strip_port("reviews"), "reviews");
        assert_eq!(strip_port("[fd00::1]:80"), "[fd00::1]");
        assert_eq!(strip_port("fd00::1"), "fd00::1");
        assert_eq!(strip_port("host:"), "host:");
        let mut table = RouteTable {
            name: "t".into(),
            virtual_hosts: vec![vh(
                "reviews",
                &["reviews", "10.96.0.7"],
                vec![route(PathMatch::Prefix("/".into()), "a", true)],
            )],
            ..Default::default()
        };
        let hit = |t: &Routes, host: &str| t.virtual_host(host).map(|v| v.name.clone());
        let strict = Routes::new(&table, &Store::new()).unwrap();
        assert_eq!(hit(&strict, "reviews:9080"), None);
        table.ignore_port_in_host_matching = true;
        let loose = Routes::new(&table, &Store::new()).unwrap();
        assert_eq!(hit(&loose, "reviews:9080").as_deref(), Some("reviews"));
        assert_eq!(hit(&loose, "10.96.0.7:9080").as_deref(), Some("reviews"));
    }
}
