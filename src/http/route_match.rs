//! Virtual host selection and route matching, in Envoy's order: exact domain, then the
//! longest `*suffix` wildcard, then the longest `prefix*` wildcard, then `*`; within a
//! virtual host the first matching route wins.
use std::{collections::HashMap, sync::Arc, time::Duration};

use crate::{
    config::{PathMatch, RouteTable},
    upstream::{Cluster, ClusterManager},
};

#[derive(Debug)]
pub struct Route {
    pub name: String,
    path: PathMatch,
    case_sensitive: bool,
    pub cluster: Arc<Cluster>,
    pub timeout: Option<Duration>,
}

#[derive(Debug)]
pub struct VirtualHost {
    pub name: String,
    routes: Vec<Route>,
}

/// A compiled route table with clusters resolved.
#[derive(Debug, Default)]
pub struct Routes {
    hosts: Vec<VirtualHost>,
    exact: HashMap<String, usize>,
    /// `*suffix` domains (stored without the `*`), longest first.
    suffixes: Vec<(String, usize)>,
    /// `prefix*` domains (stored without the `*`), longest first.
    prefixes: Vec<(String, usize)>,
    any: Option<usize>,
}

impl Routes {
    /// Builds the table; every route's cluster must exist in `clusters`.
    pub fn new(table: &RouteTable, clusters: &ClusterManager) -> Result<Self, String> {
        let mut out = Routes::default();
        for (i, vh) in table.virtual_hosts.iter().enumerate() {
            let mut routes = Vec::with_capacity(vh.routes.len());
            for r in &vh.routes {
                let cluster = clusters
                    .get(&r.cluster)
                    .ok_or_else(|| format!("unknown cluster '{}'", r.cluster))?
                    .clone();
                routes.push(Route {
                    name: r.name.clone(),
                    path: r.path.clone(),
                    case_sensitive: r.case_sensitive,
                    cluster,
                    timeout: r.timeout,
                });
            }
            out.hosts.push(VirtualHost {
                name: vh.name.clone(),
                routes,
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

    /// The route for a request, or `None` (Envoy's NR).
    pub fn route(&self, host: &str, path_and_query: &str) -> Option<&Route> {
        let path = path_and_query.split('?').next().unwrap_or("");
        self.virtual_host(host)?
            .routes
            .iter()
            .find(|r| r.matches(path))
    }
}

impl Route {
    fn matches(&self, path: &str) -> bool {
        match &self.path {
            PathMatch::Prefix(p) => {
                path.len() >= p.len()
                    && if self.case_sensitive {
                        path.as_bytes().starts_with(p.as_bytes())
                    } else {
                        path.as_bytes()[..p.len()].eq_ignore_ascii_case(p.as_bytes())
                    }
            }
            PathMatch::Path(p) => {
                if self.case_sensitive {
                    path == p
                } else {
                    path.eq_ignore_ascii_case(p)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        config::{self, ClusterConfig, Discovery, DnsFamily, UpstreamProtocol},
        telemetry::stats::Store,
    };

    fn manager() -> ClusterManager {
        let c = |name: &str| ClusterConfig {
            name: name.into(),
            discovery: Discovery::Static,
            connect_timeout: Duration::from_secs(1),
            protocol: UpstreamProtocol::Http1,
            dns_refresh_rate: Duration::from_secs(5),
            dns_family: DnsFamily::Auto,
            endpoints: vec![],
        };
        ClusterManager::new(&[c("a"), c("b"), c("c"), c("d"), c("e")], &Store::new())
    }

    fn route(path: PathMatch, cluster: &str, case_sensitive: bool) -> config::Route {
        config::Route {
            name: String::new(),
            path,
            case_sensitive,
            cluster: cluster.into(),
            timeout: None,
        }
    }

    fn vh(name: &str, domains: &[&str], routes: Vec<config::Route>) -> config::VirtualHost {
        config::VirtualHost {
            name: name.into(),
            domains: domains.iter().map(|d| d.to_string()).collect(),
            routes,
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
        };
        Routes::new(&t, &manager()).unwrap()
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
        ];
        for (host, path, want) in cases {
            let got = t.route(host, path).map(|r| r.cluster.name().to_owned());
            assert_eq!(got.as_deref(), *want, "host={host} path={path}");
        }
    }

    #[test]
    fn unknown_cluster_is_an_error() {
        let t = RouteTable {
            name: "t".into(),
            virtual_hosts: vec![vh(
                "v",
                &["*"],
                vec![route(PathMatch::Prefix("/".into()), "zz", true)],
            )],
        };
        assert_eq!(
            Routes::new(&t, &manager()).unwrap_err(),
            "unknown cluster 'zz'"
        );
    }
}
